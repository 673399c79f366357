"""Evaluation: the confusion matrix and mean IoU, the trimap band accuracy around boundaries, tables and plots (no torch needed)."""
from .confusion import ConfusionMatrix

__all__ = ["ConfusionMatrix"]
