"""Each layer's blob contract as its Caffe header declares it, the convolution_param reading
Convolution / Deconvolution / Im2col share, and MatWrite's id list."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from caffe import CaffeError
from caffe.layer import REGISTRY, make_layer
from caffe.net import Net
from caffe.proto import caffe_pb2


def layer(text, *bottom_shapes, phase="TEST"):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return make_layer(lp, bottom_shapes, phase)


# ---------------------------------------------------------------- blob contracts
# (ExactNumBottomBlobs, MinBottomBlobs, MaxBottomBlobs, ExactNumTopBlobs, MinTopBlobs,
#  MaxTopBlobs, EqualNumBottomTopBlobs, AutoTopBlobs), copied from BVLC's
# include/caffe/layers/*.hpp (and the fork's headers for its layers); -1: none.
NEURON = (1, -1, -1, 1, -1, -1, False, False)
LOSS = (2, -1, -1, 1, -1, -1, False, True)       # loss_layer.hpp
CAFFE_CONTRACTS = {
    "DenseCRF": (-1, 2, -1, 1, -1, -1, False, False),        # the DeepLab fork's densecrf_layer.hpp
    "MultiStageMeanfield": (3, -1, -1, 1, -1, -1, False, False),   # crfasrnn's multi_stage_meanfield.hpp
    "RNN": (-1, 2, 4, -1, 1, 2, False, False),    # recurrent_layer.hpp: 2-3 bottoms (3-4 with expose_hidden), 1 top (2); exact counts checked in setup
    "LSTM": (-1, 2, 5, -1, 1, 3, False, False),   # 2-3 bottoms (4-5 with expose_hidden), 1 top (3)
    "LSTMUnit": (3, -1, -1, 2, -1, -1, False, False),
    "BN": (1, -1, -1, -1, 1, 3, False, False),   # caffe-segnet common_layers.hpp: 3 tops with LEARN, else 1 (setup)
    "Upsample": (2, -1, -1, 1, -1, -1, False, False),         # caffe-segnet vision_layers.hpp
    "DenseImageData": (0, -1, -1, 2, -1, -1, False, False),   # caffe-segnet data_layers.hpp
    "Data": (0, -1, -1, -1, 1, 2, False, False),            # data_layer.hpp
    "HDF5Data": (0, -1, -1, -1, 1, -1, False, False),
    "HDF5Output": (2, -1, -1, 0, -1, -1, False, False),
    "ImageData": (0, -1, -1, 2, -1, -1, False, False),
    # BVLC's and both DeepLab forks' memory_data_layer.hpp: exactly 2; yilei0620/DeepLab-V2-Read-Memory-Data's: 3
    "MemoryData": (0, -1, -1, -1, 2, 3, False, False),
    "WindowData": (0, -1, -1, 2, -1, -1, False, False),
    **{t: NEURON for t in ("AbsVal", "BNLL", "Clip", "Dropout", "ELU", "Exp", "Log", "PReLU", "Power",
                           "ReLU", "Sigmoid", "Swish", "TanH", "Threshold")},
    **{t: (1, -1, -1, 1, -1, -1, False, False) for t in ("ArgMax", "BatchNorm", "Embed", "Flatten", "Im2col",
                                                         "InnerProduct", "LRN", "MVN", "Reduction", "Reshape",
                                                         "SPP", "Softmax", "Tile", "Padding")},
    **{t: LOSS for t in ("EuclideanLoss", "HingeLoss", "MultinomialLogisticLoss", "SigmoidCrossEntropyLoss")},
    "Accuracy": (2, -1, -1, -1, 1, 2, False, False),
    "BatchReindex": (2, -1, -1, 1, -1, -1, False, False),
    "Bias": (-1, 1, 2, 1, -1, -1, False, False),
    "Concat": (-1, 1, -1, 1, -1, -1, False, False),
    "ContrastiveLoss": (3, -1, -1, 1, -1, -1, False, True),
    "Convolution": (-1, 1, -1, -1, 1, -1, True, False),    # base_conv_layer.hpp
    "Crop": (2, -1, -1, 1, -1, -1, False, False),
    "Deconvolution": (-1, 1, -1, -1, 1, -1, True, False),
    "DummyData": (0, -1, -1, -1, 1, -1, False, False),
    "Eltwise": (-1, 2, -1, 1, -1, -1, False, False),
    "Filter": (-1, 2, -1, -1, 1, -1, False, False),
    "ImageSegData": (0, -1, -1, 3, -1, -1, False, True),    # the fork's data_layers.hpp
    "InfogainLoss": (-1, 2, 3, -1, 1, 2, False, True),
    "Input": (0, -1, -1, -1, 1, -1, False, False),
    "Interp": (-1, 1, 2, 1, -1, -1, False, False),          # v1: 1 bottom; DeepLab v2 adds a size reference
    "MatWrite": (-1, 1, -1, 0, -1, -1, False, False),       # the fork: ExactNumTopBlobs 0
    "MatRead": (0, -1, -1, 1, -1, -1, False, False),
    # the fork's weak-supervision and channel layers (vision_layers.hpp, common_layers.hpp,
    # neuron_layers.hpp)
    "AdaptiveBiasChannel": (2, -1, -1, 1, -1, -1, False, False),
    "BiasChannel": (2, -1, -1, 1, -1, -1, False, False),
    "CensorLabel": (2, -1, -1, 1, -1, -1, False, False),
    "ChannelAggregator": (1, -1, -1, 1, -1, -1, False, False),
    "DominantChannel": (1, -1, -1, 1, -1, -1, False, False),
    "GainChannel": (1, -1, -1, 1, -1, -1, False, False),
    "Histogram": (1, -1, -1, 1, -1, -1, False, False),
    "IgnoreOverlay": (2, -1, -1, 1, -1, -1, False, False),
    "OneHot": (1, -1, -1, 1, -1, -1, False, False),
    "RelativeError": (2, -1, -1, 1, -1, -1, False, False),
    "UniqueLabel": (1, -1, -1, 1, -1, -1, False, False),
    "Parameter": (0, -1, -1, 1, -1, -1, False, False),
    "Pooling": (1, -1, -1, -1, 1, 2, False, False),         # MaxTopBlobs: 2 for MAX, else 1 (setup)
    "Python": (-1, -1, -1, -1, -1, -1, False, False),       # PythonLayer declares nothing
    "Scale": (-1, 1, 2, 1, -1, -1, False, False),
    "SegAccuracy": (2, -1, -1, 1, -1, -1, False, False),
    "Silence": (-1, 1, -1, 0, -1, -1, False, False),
    "Slice": (1, -1, -1, -1, 1, -1, False, False),
    "SoftmaxWithLoss": (2, -1, -1, -1, 1, 2, False, True),
    "Split": (1, -1, -1, -1, 1, -1, False, False),
}


@pytest.mark.parametrize("type_name", sorted(REGISTRY))
def test_every_layer_declares_its_caffe_header_contract(type_name):
    cls = REGISTRY[type_name]
    declared = (cls.exact_num_bottom_blobs, cls.min_bottom_blobs, cls.max_bottom_blobs, cls.exact_num_top_blobs,
                cls.min_top_blobs, cls.max_top_blobs, cls.equal_num_bottom_top_blobs, cls.auto_top_blobs)
    assert declared == CAFFE_CONTRACTS[type_name]
    assert not hasattr(cls, "num_bottoms") and not hasattr(cls, "num_tops")   # no second spelling


def test_contract_errors_name_the_layer_and_the_count():
    with pytest.raises(CaffeError, match=r"layer 'r' \(ReLU\): takes exactly 1 bottom blob\(s\), got 2"):
        layer('name: "r" type: "ReLU" bottom: "a" bottom: "b" top: "y"', (1, 2), (1, 2))
    with pytest.raises(CaffeError, match=r"layer 'e' \(Eltwise\): takes at least 2 bottom blob\(s\), got 1"):
        layer('name: "e" type: "Eltwise" bottom: "a" top: "y"', (1, 2))
    with pytest.raises(CaffeError, match=r"takes at most 2 top blob\(s\), got 3"):
        layer('name: "p" type: "Pooling" bottom: "x" top: "a" top: "b" top: "c" '
              'pooling_param { kernel_size: 1 }', (1, 1, 2, 2))
    with pytest.raises(CaffeError, match=r"takes as many tops as bottoms, got 2 bottom\(s\) and 1 top\(s\)"):
        layer('name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "y" '
              'convolution_param { num_output: 1 kernel_size: 1 }', (1, 1, 2, 2), (1, 1, 2, 2))


def test_loss_layers_get_an_automatic_top_and_force_backward_spares_only_their_labels():
    loss = layer('name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y"', (2, 3), (2,))
    assert loss.top_count == 1 and loss.top_shapes == [()] and loss.is_loss
    assert [loss.allow_force_backward(j) for j in (0, 1)] == [True, False]
    euclid = layer('name: "e" type: "EuclideanLoss" bottom: "a" bottom: "b"', (2, 3), (2, 3))
    assert [euclid.allow_force_backward(j) for j in (0, 1)] == [True, True]       # euclidean_loss_layer.hpp
    pair = layer('name: "c" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "s"',
                 (2, 3, 1, 1), (2, 3, 1, 1), (2, 1, 1, 1))
    assert [pair.allow_force_backward(j) for j in (0, 1, 2)] == [True, True, False]  # never the similarity
    relu = layer('name: "r" type: "ReLU" bottom: "x" top: "y"', (2, 3))
    assert relu.allow_force_backward(0) and not relu.is_loss


def test_force_backward_reaches_a_euclidean_target_but_not_softmax_labels():
    text = ('force_backward: true\n'
            'layer { name: "in" type: "Input" top: "a" top: "b" top: "lab" input_param { shape { dim: 2 dim: 3 } '
            'shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n'
            'layer { name: "e" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "e" }\n'
            'layer { name: "s" type: "SoftmaxWithLoss" bottom: "a" bottom: "lab" top: "s" }\n')
    net = Net(text, "TRAIN")
    assert net.bottom_need_backward[1:] == [[True, True], [True, False]]


def test_python_layer_takes_any_number_of_tops(tmp_path, monkeypatch):
    (tmp_path / "contract_py_layers.py").write_text(
        "import caffe\n"
        "class Two(caffe.Layer):\n"
        "    def reshape(self, bottom, top):\n"
        "        for t in top:\n"
        "            t.reshape(*bottom[0].data.shape)\n"
        "    def forward(self, bottom, top):\n"
        "        for k, t in enumerate(top):\n"
        "            t.data[...] = bottom[0].data + k\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    lay = layer('name: "p" type: "Python" bottom: "x" top: "a" top: "b" top: "c" '
                'python_param { module: "contract_py_layers" layer: "Two" }', (1, 2))
    assert lay.top_count == 3 and lay.top_shapes == [(1, 2)] * 3
    tops = lay(torch.zeros(1, 2))
    assert [t.tolist() for t in tops] == [[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 2.0]]]


# ---------------------------------------------------------------- convolution_param
def test_one_geometry_reader_for_convolution_deconvolution_and_im2col():
    spec = 'convolution_param { num_output: 1 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 '
    conv = layer(f'name: "c" type: "Convolution" bottom: "x" top: "y" {spec} dilation: 2 }}', (1, 1, 9, 4))
    deconv = layer(f'name: "d" type: "Deconvolution" bottom: "x" top: "y" {spec} dilation: 2 }}', (1, 1, 9, 4))
    im2col = layer(f'name: "i" type: "Im2col" bottom: "x" top: "y" {spec} dilation: 2 }}', (1, 1, 9, 4))
    for lay in (conv, deconv, im2col):
        assert (lay.kernel, lay.stride, lay.pad, lay.dilation) == ((3, 1), (2, 1), (1, 0), (2, 2))
    assert conv.top_shapes == [(1, 1, 4, 4)]       # (9 + 2 - 5) // 2 + 1 = 4; (4 - 1) // 1 + 1 = 4
    assert deconv.top_shapes == [(1, 1, 19, 4)]    # 2 * 8 + 2 * 2 + 1 - 2 = 19; 3 + 0 + 1 = 4
    assert im2col.top_shapes == [(1, 3, 4, 4)]
    for kind in ("Convolution", "Deconvolution", "Im2col"):
        with pytest.raises(CaffeError, match=rf"'{kind[0]}' \({kind}\): kernel is kernel_size OR kernel_h and "
                                             "kernel_w; not both"):
            layer(f'name: "{kind[0]}" type: "{kind}" bottom: "x" top: "y" convolution_param {{ num_output: 1 '
                  'kernel_size: 3 kernel_h: 3 kernel_w: 3 }', (1, 1, 5, 5))
        with pytest.raises(CaffeError, match="kernel, stride and dilation must be positive"):
            layer(f'name: "k" type: "{kind}" bottom: "x" top: "y" convolution_param {{ num_output: 1 '
                  'kernel_size: 3 stride: 0 }', (1, 1, 5, 5))


def test_hole_is_the_forks_dilation_for_convolution_and_im2col_only():
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    hole = layer('name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 2 hole: 3 }',
                 (1, 1, 5, 5))
    assert hole.dilation == (3, 3) and hole.top_shapes == [(1, 4, 2, 2)]   # 5 - 4 + 1 = 2
    # the column at output (0, 0) takes pixels (0, 0), (0, 3), (3, 0), (3, 3)
    assert hole(x)[0][0, :, 0, 0].tolist() == [0.0, 3.0, 15.0, 18.0]
    with pytest.raises(CaffeError, match="hole is the DeepLab fork's field for Convolution and Im2col; use dilation"):
        layer('name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 1 '
              'kernel_size: 2 hole: 2 }', (1, 1, 5, 5))
    with pytest.raises(CaffeError, match="give dilation or hole, not both"):
        layer('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 1 '
              'kernel_size: 2 hole: 2 dilation: 2 }', (1, 1, 5, 5))


def test_convolution_applies_the_same_weights_to_each_bottom_top_pair():
    conv = layer('name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" '
                 'convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "constant" value: 2 } '
                 'bias_filler { type: "constant" value: 1 } }', (1, 1, 1, 2), (1, 1, 1, 2))
    assert len(conv.blobs) == 2 and conv.top_shapes == [(1, 2, 1, 2)] * 2
    ya, yb = conv(torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[-1.0, 0.0]]]]))
    assert ya.tolist() == [[[[3.0, 5.0]], [[3.0, 5.0]]]]     # 2 x + 1 on both outputs
    assert yb.tolist() == [[[[-1.0, 1.0]], [[-1.0, 1.0]]]]
    with pytest.raises(CaffeError, match="all bottoms must have the same shape: bottom 1 is"):
        layer('name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" '
              'convolution_param { num_output: 2 kernel_size: 1 }', (1, 1, 1, 2), (1, 1, 1, 3))
    for kind in ("Convolution", "Deconvolution"):
        with pytest.raises(CaffeError, match=r"channels \(3\) and num_output \(2\) must be divisible by group \(2\)"):
            layer(f'name: "g" type: "{kind}" bottom: "a" top: "y" convolution_param {{ num_output: 2 '
                  'kernel_size: 1 group: 2 }', (1, 3, 2, 2))


def test_two_pair_convolution_gradient_is_the_sum_over_pairs():
    conv = layer('name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" '
                 'convolution_param { num_output: 1 kernel_size: 1 bias_term: false '
                 'weight_filler { type: "constant" value: 1 } }', (1, 1, 1, 2), (1, 1, 1, 2))
    ya, yb = conv(torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[3.0, 4.0]]]]))
    (ya.sum() + 2 * yb.sum()).backward()
    assert conv.blobs[0].grad.item() == pytest.approx(3.0 + 2 * 7.0)   # Caffe accumulates each pair


# ---------------------------------------------------------------- MatWrite's ids
def _mat_write(tmp_path, source_text, extra=""):
    src = tmp_path / "ids.txt"
    src.write_text(source_text)
    lay = layer(f'name: "w" type: "MatWrite" bottom: "x" mat_write_param {{ prefix: "{tmp_path}/out/" '
                f'source: "{src}" {extra} }}', (1, 2, 1, 1))
    lay.format = "npy"
    return lay, src


def test_mat_write_reads_ids_with_the_one_list_reader(tmp_path):
    # comments, blank lines, CRLF and a label column are read as caffe.util.lists reads them
    lay, _ = _mat_write(tmp_path, "# val ids\r\n2007_000033.jpg lab.png\r\n\r\n2007_000042.jpg\r\n", "strip: 4")
    assert lay.ids == ["2007_000033", "2007_000042"]
    for v in (1.0, 2.0):
        lay(torch.full((1, 2, 1, 1), v))
    assert np.load(tmp_path / "out" / "2007_000042_blob_0.npy").ravel().tolist() == [2.0, 2.0]
    with pytest.raises(CaffeError, match=r"image 3 has no id: .*ids.txt lists 2"):
        lay(torch.zeros(1, 2, 1, 1))


def test_mat_write_names_files_by_iteration_with_a_period(tmp_path):
    lay, _ = _mat_write(tmp_path, "a\nb\nc\n", "period: 2")
    for v in (1.0, 2.0, 3.0):
        lay(torch.full((1, 2, 1, 1), v))
    # as the fork: iterations 0 and 2 are written, under the 1st and 3rd id
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_blob_0.npy", "c_blob_0.npy"]
    assert np.load(tmp_path / "out" / "c_blob_0.npy").ravel().tolist() == [3.0, 3.0]


def test_mat_write_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(CaffeError, match=r"layer 'w' \(MatWrite\): .*ids.txt:3: strip 4 removes all of 'x.pn'"):
        _mat_write(tmp_path, "# header\nlong_enough\nx.pn\n", "strip: 4")
    with pytest.raises(CaffeError, match=r"layer 'w' \(MatWrite\): mat_write_param.source: list file .*missing.txt "
                                         "not found"):
        layer(f'name: "w" type: "MatWrite" bottom: "x" mat_write_param {{ prefix: "p" '
              f'source: "{tmp_path}/missing.txt" }}', (1, 2, 1, 1))
    with pytest.raises(CaffeError, match="ids.txt:1: expected 'image \\[label\\]', got 3 columns"):
        _mat_write(tmp_path, "a b c\n")
    with pytest.raises(CaffeError, match="mat_write_param.period must be positive, got 0"):
        _mat_write(tmp_path, "a\n", "period: 0")
    with pytest.raises(CaffeError, match="mat_write_param.strip cannot be negative, got -1"):
        _mat_write(tmp_path, "a\n", "strip: -1")


def test_conv_helpers_reject_unknown_channels():
    with pytest.raises(CaffeError, match="the bottoms' channel count must be known"):
        layer('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 1 '
              'kernel_size: 1 }', (1, None, 4, 4))
    # F is Caffe's order: conv2d with the same weights is the reference for one pair
    conv = layer('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 '
                 'kernel_size: 3 pad: 1 hole: 2 weight_filler { type: "gaussian" } }', (1, 1, 5, 5))
    x = torch.randn(1, 1, 5, 5)
    ref = F.conv2d(x, conv.blobs[0], conv.blobs[1], 1, 1, 2)
    assert torch.allclose(conv(x)[0], ref)
