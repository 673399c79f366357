"""Caffe's layers as small torch modules, looked up by Caffe type name: the base class and
registry (``base``: Layer, LossLayer, register, make_layer) and one module per layer family,
as BVLC groups them:

| module | types |
|---|---|
| ``data`` | Input, Data, ImageData, HDF5Data, WindowData, MemoryData, ImageSegData, DenseImageData, DummyData, Parameter |
| ``conv``, ``deconv`` | Convolution; Deconvolution, Im2col |
| ``pooling``, ``spp`` | Pooling; SPP |
| ``neuron`` | ReLU, Dropout, Sigmoid, TanH, AbsVal, Power, Exp, Log, BNLL, Threshold, ELU, PReLU, Clip, Swish |
| ``normalization`` | BatchNorm, BN (SegNet / PSPNet), MVN, LRN |
| ``resample`` | Interp, Padding (the DeepLab fork), Upsample (SegNet), Crop |
| ``shape_ops``, ``combine`` | Split, Flatten, Reshape, Slice, Tile, Filter, BatchReindex, Reduction; Eltwise, Concat, Silence |
| ``inner_product``, ``scale_bias`` | InnerProduct, Embed; Scale, Bias |
| ``loss``, ``accuracy`` | Softmax and every loss; Accuracy, ArgMax, SegAccuracy |
| ``output`` | MatWrite (the fork), HDF5Output |
| ``crf`` | DenseCRF (the fork), MultiStageMeanfield (CRF-RNN) |
| ``weak_label``, ``channel_ops``, ``mat_read`` | the fork's weak-supervision layers; MatRead |
| ``recurrent``, ``python`` | RNN, LSTM, LSTMUnit; Python |

``python -m caffe.layer`` prints the registered types.
"""
from .base import AUTOMATIC, REGISTRY, Layer, LossLayer, Shape, check_blob_counts, layer_class, make_layer, register, spatial, top_count  # noqa: F401

from . import data, conv, deconv, pooling, spp, neuron, normalization, resample, shape_ops, combine, inner_product, scale_bias, loss, accuracy, output, python, crf, recurrent, weak_label, channel_ops, mat_read  # noqa: F401  (each registers its types)
