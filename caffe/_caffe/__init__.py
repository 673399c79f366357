"""What BVLC's compiled ``_caffe`` module (python/caffe/_caffe.cpp) provides under pycaffe's
public classes in ``caffe.pycaffe``: the Net's blob and layer views (``graph``), batched
forward/backward and data-layer feeding (``batch``), and the Python solver classes (``solver``).
"""
