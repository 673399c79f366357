"""The DeepLab v1 pipeline over the ``caffe`` engine and the ``densecrf`` library, by stage:
``data/`` (dataset preparation), ``extract/`` (score maps), ``crf/`` (the batch CRF stage and
its parameter search), ``eval/`` (mean IoU, trimap), ``report/`` (HTML report, training logs),
``weights/`` (VGG-16 initialisation, model zoo), ``recipe/`` (the GPU recipe) and ``commands/``
(thin argument parsing for every tool); shared helpers at the root (``cli``, ``labels``,
``lists``, ``parallel``, ``provenance``, ``netinfo``).

Imports: ``caffe`` and ``densecrf``; nothing imports ``deeplab``. Importing the package is
light: torch is imported only by the modules that run a net (``deeplab.extract.runner``,
``deeplab.extract.scorenet``), so ``deeplab.eval`` works in processes without torch.
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
