"""The DeepLab v1 pipeline over the ``caffe`` engine, by stage: dataset preparation
(``deeplab.data``), score-map extraction, evaluation (``deeplab.eval``), report, model zoo and
VGG-16 initialisation.

Importing the package is light: torch is imported only by the modules that run a net
(``deeplab.extract``, ``deeplab.scorenet``), so ``deeplab.eval`` works in processes without
torch (the CRF stage).
"""
from caffe import CaffeError as DeepLabError  # one user-error class for engine and pipeline

__version__ = "0.1.0"
__all__ = ["DeepLabError"]
