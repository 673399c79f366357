"""Solvers, as BVLC's src/caffe/solver.cpp and src/caffe/solvers/: the training loop with its
snapshots, tests and display (``solver``), one update rule per solver type (``update``: SGD,
Nesterov, AdaGrad, RMSProp, AdaDelta, Adam) and data-parallel training over torch.distributed
(``parallel``, BVLC's parallel.cpp)."""
