"""A Caffe engine on PyTorch, importable as pycaffe is: ``import caffe``.

The package mirrors BVLC Caffe's tree: ``proto`` (the schema, ``caffe.proto.caffe_pb2``),
``prototxt`` (text parsing and V1 upgrade), ``model_io`` (caffemodel / solverstate files),
``layer`` (one module per layer family and the registry keyed by Caffe type name), ``net``,
``solver`` and ``sgd``, ``imageseg`` (the DeepLab fork's ImageSegData source), and the
pycaffe API on top of them. It knows nothing of datasets, experiments or the CRF stage.

Importing ``caffe`` is light: torch is imported only when an engine part is first used, so
``caffe.proto`` and the file helpers work in processes without torch.
"""

__version__ = "1.0.0"

TRAIN = 0
TEST = 1


class CaffeError(Exception):
    """A user error: bad prototxt, bad file, shape mismatch. Tools print it as one line."""


# pycaffe's names, resolved on first use (PEP 562) so that `import caffe` stays light.
# A name mapped to ".<itself>" is a submodule (caffe.io, caffe.draw, ...).
_LAZY: dict[str, str] = {
    "Net": ".pycaffe", "set_mode_cpu": ".pycaffe", "set_mode_gpu": ".pycaffe", "set_device": ".pycaffe",
    "set_random_seed": ".pycaffe", "layer_type_list": ".pycaffe", "has_nccl": ".pycaffe",
    "Blob": ".blob",
    "Layer": ".layer.python",
    "SGDSolver": ".pysolver", "NesterovSolver": ".pysolver", "AdaGradSolver": ".pysolver",
    "RMSPropSolver": ".pysolver", "AdaDeltaSolver": ".pysolver", "AdamSolver": ".pysolver",
    "get_solver": ".pysolver",
    "NetSpec": ".net_spec", "layers": ".net_spec", "params": ".net_spec", "to_proto": ".net_spec",
    "Classifier": ".classifier", "Detector": ".detector",
    "io": ".io", "draw": ".draw", "coord_map": ".coord_map", "net_spec": ".net_spec",
    "classifier": ".classifier", "detector": ".detector", "pycaffe": ".pycaffe",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'caffe' has no attribute {name!r}")
    import importlib
    found = importlib.import_module(module, __name__)
    value = found if module == "." + name else getattr(found, name)
    globals()[name] = value
    return value
