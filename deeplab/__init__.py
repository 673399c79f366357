"""DeepLab v1 driven by Caffe prototxt files, executed with PyTorch.

Importing the package is light: torch is imported only by the modules that need it
(``deeplab.net``, ``deeplab.layers``, ``deeplab.solver``), so ``deeplab.eval`` and
``deeplab.proto`` work in processes without torch (the CRF stage).
"""

__version__ = "0.1.0"


class DeepLabError(Exception):
    """A user error: bad prototxt, bad file, shape mismatch. Tools print it as one line."""
