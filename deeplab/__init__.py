"""The DeepLab v1 pipeline over the ``caffe`` engine, by stage: dataset preparation
(``deeplab.data``), score-map extraction, evaluation (``deeplab.eval``), report, model zoo and
VGG-16 initialisation.

Importing the package is light: torch is imported only by the modules that run a net
(``deeplab.extract``, ``deeplab.scorenet``), so ``deeplab.eval`` works in processes without
torch (the CRF stage).
"""
from caffe import CaffeError
from densecrf import CrfError


class DeepLabError(CaffeError):
    """A user error of the pipeline (bad list, dataset, score map, option), above the engine's."""


# What a pipeline command reports in one line (exit 2): the engine's, the pipeline's and the
# CRF library's user errors.
USER_ERRORS = (CaffeError, CrfError)

__version__ = "0.1.0"
__all__ = ["DeepLabError", "USER_ERRORS"]
