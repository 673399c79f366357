"""A Caffe engine on PyTorch, importable as pycaffe is: ``import caffe``.

pycaffe's public modules are where BVLC's python/caffe has them: ``caffe.pycaffe`` (Net,
solvers, modes), ``caffe.io``, ``caffe.net_spec``, ``caffe.coord_map``, ``caffe.draw``,
``caffe.classifier``, ``caffe.detector``, ``caffe.proto.caffe_pb2``; ``caffe._caffe`` is what
BVLC's compiled _caffe module adds under them. The rest mirrors BVLC's src/caffe: the core
(``net`` and ``backward_plan``, ``blob``, ``prototxt`` (schema text, V1 upgrade), ``model_io``
(caffemodel / solverstate)), ``layer/`` (the registry by type, one module per layer family),
``data/`` (the data layers' sources, one registry by type), ``solvers/``, ``util/`` (files,
images, lists, HDF5, LMDB / LevelDB) and ``tool/`` (the ``caffe`` command: train, test, time).

Imports: never ``deeplab``; ``densecrf`` (the CRF library, a leaf) only in the CRF layers.
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
    "set_phase_train": "._caffe.legacy", "set_phase_test": "._caffe.legacy",
    "Blob": ".blob",
    "Layer": ".layer.python",
    "SGDSolver": "._caffe.solver", "NesterovSolver": "._caffe.solver", "AdaGradSolver": "._caffe.solver",
    "RMSPropSolver": "._caffe.solver", "AdaDeltaSolver": "._caffe.solver", "AdamSolver": "._caffe.solver",
    "get_solver": "._caffe.solver",
    "Timer": "._caffe.parallel", "init_log": "._caffe.parallel", "log": "._caffe.parallel",
    "NCCL": "._caffe.parallel", "solver_count": "._caffe.parallel", "set_solver_count": "._caffe.parallel",
    "solver_rank": "._caffe.parallel", "set_solver_rank": "._caffe.parallel",
    "set_multiprocess": "._caffe.parallel",
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
