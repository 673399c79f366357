"""Segmentation metrics (no torch needed)."""
from .confusion import ConfusionMatrix

__all__ = ["ConfusionMatrix"]
