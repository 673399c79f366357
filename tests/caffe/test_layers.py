"""Caffe's layer rules against hand-computed numbers."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from caffe import CaffeError
from caffe.layer import REGISTRY, make_layer
from caffe.layer.pooling import pool_out
from caffe.layer.resample import interp_out
from caffe.proto import caffe_pb2
from conftest import FIXTURES


def layer(text, *bottom_shapes, phase="TEST"):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return make_layer(lp, bottom_shapes, phase)


@pytest.mark.parametrize("size,k,s,p,expected", [
    (306, 3, 2, 1, 154),   # ceil((306 + 2 - 3) / 2) + 1 = 153 + 1
    (154, 3, 2, 1, 78),
    (78, 3, 2, 1, 40),
    (321, 3, 2, 1, 161),
    (513, 3, 2, 1, 257),
    (6, 3, 2, 1, 4),       # ceil(5/2)+1 = 4; last window starts at 5 < 6 + 1: kept
    (5, 2, 2, 1, 3),       # ceil(5/2)+1 = 4, but window 4 starts at 6 >= 5 + 1: dropped
    (7, 2, 2, 0, 4),       # ceil(5/2)+1 = 4 (no pad: never dropped; the last window hangs over)
    (13, 3, 1, 1, 13),
    (17, 4, 3, 2, 7),      # ceil((17 + 4 - 4) / 3) + 1 = 6 + 1; (7-1)*3 = 18 >= 19? no
])
def test_pool_output_size(size, k, s, p, expected):
    assert pool_out(size, k, p, s) == expected


def test_max_pool_values_and_padding_never_wins():
    pool = layer('name: "p" type: "Pooling" bottom: "x" top: "y" '
                 'pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }', (1, 1, 4, 4))
    x = -torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)     # all negative: zero padding would win
    y = pool(x)[0]
    assert pool.top_shapes == [(1, 1, 3, 3)]             # ceil((4+2-3)/2)+1 = 3
    # window rows/cols: [-1,1], [1,3], [3,5) clipped -> [3]
    expected = torch.tensor([[-1.0, -2.0, -4.0], [-5.0, -6.0, -8.0], [-13.0, -14.0, -16.0]])
    assert torch.equal(y[0, 0], expected)


def test_ave_pool_divides_by_window_clipped_to_image_plus_pad():
    pool = layer('name: "p" type: "Pooling" bottom: "x" top: "y" '
                 'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', (1, 1, 4, 4))
    y = pool(torch.ones(1, 1, 4, 4))[0][0, 0]
    # corner window covers rows -1..1: 9 cells counted (pad included), 4 real ones -> 4/9
    # last window rows 3..5 clipped to 3..4 (image + pad ends at 5): 2 x 2 counted... see below
    # Caffe: hend = min(hstart + k, H + pad) = min(6, 5) = 5, size = 5 - 3 = 2; real rows: 1
    assert y[0, 0].item() == pytest.approx(4 / 9)
    assert y[0, 1].item() == pytest.approx(6 / 9)
    assert y[0, 2].item() == pytest.approx(2 / 6)   # rows -1..1 (3, 2 real) x cols 3..4 (2, 1 real)
    assert y[2, 2].item() == pytest.approx(1 / 4)


def test_ave_pool_large_pad_path_matches_caffe_rule():
    """pad > kernel/2 takes the explicit-padding path; check it against a direct loop of Caffe's rule."""
    pool = layer('name: "p" type: "Pooling" bottom: "x" top: "y" '
                 'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 }', (1, 1, 5, 6))
    x = torch.arange(30.0).reshape(1, 1, 5, 6)
    y = pool(x)[0][0, 0]
    k, s, p = 3, 2, 2
    oh, ow = pool_out(5, k, p, s), pool_out(6, k, p, s)
    assert y.shape == (oh, ow)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, 5 + p), min(ws + k, 6 + p)
            size = (he - hs) * (we - ws)
            window = x[0, 0, max(hs, 0):min(he, 5), max(ws, 0):min(we, 6)]
            assert y[i, j].item() == pytest.approx(window.sum().item() / size)


def test_global_pooling():
    pool = layer('name: "g" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE global_pooling: true }',
                 (2, 3, 5, 7))
    x = torch.randn(2, 3, 5, 7)
    assert pool.top_shapes == [(2, 3, 1, 1)]
    assert torch.allclose(pool(x)[0][..., 0, 0], x.mean(dim=(2, 3)))


@pytest.mark.parametrize("size,param,expected", [
    (41, "zoom_factor: 8", 321),     # 41 + 40 * 7
    (65, "zoom_factor: 8", 513),
    (321, "shrink_factor: 8", 41),   # (321 - 1) / 8 + 1
    (306, "shrink_factor: 8", 39),   # 305 / 8 = 38 (integer division) + 1
    (513, "shrink_factor: 8", 65),
    (10, "shrink_factor: 3 zoom_factor: 2", 7),   # (9/3 + 1) = 4 -> 4 + 3
])
def test_interp_sizes(size, param, expected):
    p = text_format.Parse(param, caffe_pb2.InterpParameter())
    assert interp_out(size, p) == expected


def test_interp_values_align_corners():
    interp = layer('name: "i" type: "Interp" bottom: "x" top: "y" interp_param { zoom_factor: 2 }', (1, 1, 2, 3))
    x = torch.tensor([[[[0.0, 2.0, 4.0], [10.0, 12.0, 14.0]]]])
    y = interp(x)[0][0, 0]
    assert y.shape == (3, 5)                      # 2 + 1*1, 3 + 2*1
    expected = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14.0]])
    assert torch.allclose(y, expected)


def test_interp_shrink_samples_exact_pixels_and_crops_with_pad():
    interp = layer('name: "i" type: "Interp" bottom: "x" top: "y" interp_param { shrink_factor: 4 }', (1, 1, 9, 9))
    x = torch.arange(81.0).reshape(1, 1, 9, 9)
    y = interp(x)[0][0, 0]                        # (9-1)/4 + 1 = 3 samples at 0, 4, 8
    assert torch.equal(y, x[0, 0, ::4, ::4])
    cropped = layer('name: "i" type: "Interp" bottom: "x" top: "y" '
                    'interp_param { height: 2 width: 2 pad_beg: 0 pad_end: -1 }', (1, 1, 9, 9))
    z = cropped(x)[0][0, 0]                       # input cut to 8x8, corners kept: 0 and 7
    assert torch.equal(z, torch.tensor([[0.0, 7.0], [63.0, 70.0]]))


def test_dilated_convolution_and_hole_spelling():
    a = layer('name: "c" type: "Convolution" bottom: "x" top: "y" '
              'convolution_param { num_output: 1 kernel_size: 3 dilation: 2 bias_term: false '
              'weight_filler { type: "constant" value: 1 } }', (1, 1, 7, 7))
    b = layer('name: "c" type: "Convolution" bottom: "x" top: "y" '
              'convolution_param { num_output: 1 kernel_size: 3 hole: 2 bias_term: false '
              'weight_filler { type: "constant" value: 1 } }', (1, 1, 7, 7))
    assert a.top_shapes == b.top_shapes == [(1, 1, 3, 3)]     # 7 - (2*2 + 1) + 1
    x = torch.arange(49.0).reshape(1, 1, 7, 7)
    y = a(x)[0]
    # output (0,0) sums rows/cols 0, 2, 4: rows*7 + cols
    rows, cols = [0, 2, 4], [0, 2, 4]
    assert y[0, 0, 0, 0].item() == sum(r * 7 + c for r in rows for c in cols)
    assert torch.equal(y, b(x)[0])


def test_padding_layer_pads_and_crops():
    pad = layer('name: "p" type: "Padding" bottom: "x" top: "y" padding_param { pad_beg: 1 pad_end: -2 }',
                (1, 1, 5, 5))
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    y = pad(x)[0][0, 0]
    assert pad.top_shapes == [(1, 1, 4, 4)]
    assert y.shape == (4, 4) and y[0].abs().sum() == 0 and y[:, 0].abs().sum() == 0
    assert torch.equal(y[1:, 1:], x[0, 0, :3, :3])


def test_eltwise_sum_coeff_prod_max():
    mk = lambda p: layer(f'name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param {{ {p} }}',
                         (2, 3), (2, 3))
    a, b = torch.tensor([[1.0, -2, 3], [0, 5, -1]]), torch.tensor([[2.0, 2, -3], [1, -1, 4]])
    assert torch.equal(mk("operation: SUM coeff: 0.5 coeff: -2")(a, b)[0], 0.5 * a - 2 * b)
    assert torch.equal(mk("operation: PROD")(a, b)[0], a * b)
    assert torch.equal(mk("operation: MAX")(a, b)[0], torch.maximum(a, b))


def test_softmax_loss_ignore_and_normalisation_hand_computed():
    scores = torch.log(torch.tensor([[[[0.5]], [[0.25]], [[0.25]]], [[[0.1]], [[0.8]], [[0.1]]]]))  # N=2, C=3
    labels = torch.tensor([[[[0.0]]], [[[255.0]]]])
    for norm, divisor in (("VALID", 1), ("BATCH_SIZE", 2), ("FULL", 2), ("NONE", 1)):
        loss = layer(f'name: "l" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" '
                     f'loss_param {{ ignore_label: 255 normalization: {norm} }}', (2, 3, 1, 1), (2, 1, 1, 1))
        assert loss(scores, labels)[0].item() == pytest.approx(-np.log(0.5) / divisor, rel=1e-6), norm


def test_seg_accuracy_is_the_forks_confusion_matrix_and_reset_false_accumulates():
    """The forks' seg_accuracy_layer.cpp + confusion_matrix.cpp, worked out by hand. Pixels (scores
    over 3 classes, label): ([1,2,0], 1) right; ([3,3,0], 0) a tie, which std::greater on (score,
    class) gives to class 1: wrong; ([0,0,5], 255) ignored; ([4,0,1], 0) right. Rows 0: [1,1,0],
    1: [0,1,0], 2: [0,0,0]: accuracy 2/3; recall over present classes (1/2 + 1) / 2; IoU
    (1/2 + 1/2 + 1) / 3 (class 2's empty union counts 1, over all 3 classes)."""
    scores = torch.tensor([[1., 3, 0, 4], [2, 3, 0, 0], [0, 0, 5, 1]]).reshape(1, 3, 1, 4)
    label = torch.tensor([1., 0, 255, 0]).reshape(1, 1, 1, 4)
    second = torch.tensor([[0., 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]).reshape(1, 3, 1, 4)
    label2 = torch.tensor([2., 255, 255, 255]).reshape(1, 1, 1, 4)   # one more right pixel of class 2
    text = 'name: "a" type: "SegAccuracy" bottom: "s" bottom: "l" top: "acc" seg_accuracy_param { ignore_label: 255 %s }'
    fresh, kept = layer(text % "", (1, 3, 1, 4), (1, 1, 1, 4)), layer(text % "reset: false", (1, 3, 1, 4), (1, 1, 1, 4))
    for acc in (fresh, kept):
        assert acc(scores, label)[0].reshape(3).tolist() == pytest.approx([2 / 3, 0.75, 2 / 3])
    assert fresh(second, label2)[0].reshape(3).tolist() == pytest.approx([1, 1, 1])   # one pixel: all right
    # accumulated rows 0: [1,1,0], 1: [0,1,0], 2: [0,0,1]: 3/4, (1/2 + 1 + 1) / 3, (1/2 + 1/2 + 1) / 3
    assert kept(second, label2)[0].reshape(3).tolist() == pytest.approx([3 / 4, 5 / 6, 2 / 3])
    with pytest.raises(CaffeError, match=r"layer 'a' \(SegAccuracy\): unexpected label 7 "):
        fresh(scores, torch.tensor([1., 0, 7, 0]).reshape(1, 1, 1, 4))


def test_dropout_scales_in_training_only():
    d = layer('name: "d" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 0.5 }', (1000,))
    x = torch.ones(1000)
    d.eval()
    assert torch.equal(d(x)[0], x)
    d.train()
    y = d(x)[0]
    assert set(torch.unique(y).tolist()) <= {0.0, 2.0} and 300 < int((y == 2).sum()) < 700


def test_layer_errors_name_the_layer():
    with pytest.raises(CaffeError, match=r"layer 'p' \(Pooling\).*pad must be smaller"):
        layer('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 2 pad: 2 }', (1, 1, 5, 5))
    with pytest.raises(CaffeError, match=r"layer 'c'.*smaller than the dilated kernel"):
        layer('name: "c" type: "Convolution" bottom: "x" top: "y" '
              'convolution_param { num_output: 1 kernel_size: 3 dilation: 12 }', (1, 1, 5, 5))
    with pytest.raises(CaffeError, match=r"unknown layer type 'Bogus'"):
        layer('name: "b" type: "Bogus" bottom: "x" top: "y"', (1,))
    with pytest.raises(CaffeError, match=r"layer 'e'.*shape"):
        layer('name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y"', (1, 2), (1, 3))


# ------------------------------------------------------------------ every registered layer
# Per type: (parameters, bottom tensors); the default is the bare type with as many
# (2, 3, 5, 5) bottoms as its contract needs. Types fed from outside or writing files skip.
def _labels(n=2, c=3, h=5, w=5, ignore=True):
    lab = torch.randint(0, c, (n, 1, h, w)).float()
    if ignore:
        lab[0, 0, 0, 0] = 255
    return lab


def _x(*shape):
    return torch.randn(*shape) if shape else torch.randn(2, 3, 5, 5)


REGISTRY_EXAMPLES = {
    "MultiStageMeanfield": ("multi_stage_meanfield_param { num_iterations: 2 theta_alpha: 5 theta_beta: 3 "
                            "theta_gamma: 3 }", None),
    "DenseCRF": ("dense_crf_param { max_iter: 2 pos_w: 3 pos_xy_std: 3 bi_w: 4 bi_xy_std: 5 bi_rgb_std: 3 }",
                 [_x(), torch.tensor([[5.0, 4.0], [3.0, 5.0]]).reshape(2, 1, 1, 2), _x()]),
    "Accuracy": ("", [_x(2, 3), torch.tensor([0.0, 2.0])]),
    "BatchReindex": ("", [_x(), torch.tensor([1.0, 0.0])]),
    "Bias": ("", [_x(), _x(3)]),
    "Clip": ("clip_param { min: -0.5 max: 0.5 }", None),
    "ContrastiveLoss": ("", [_x(2, 3), _x(2, 3), torch.tensor([0.0, 1.0])]),
    "Convolution": ("convolution_param { num_output: 2 kernel_size: 3 pad: 1 weight_filler { type: 'gaussian' } }", None),
    "Crop": ("crop_param { axis: 2 offset: 1 }", [_x(), _x(2, 3, 3, 3)]),
    "Deconvolution": ("convolution_param { num_output: 2 kernel_size: 2 stride: 2 weight_filler { type: 'gaussian' } }",
                      None),
    "DummyData": ("dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: 'constant' value: 2 } }", []),
    "Embed": ("embed_param { num_output: 4 input_dim: 5 weight_filler { type: 'gaussian' } }",
              [torch.tensor([[0.0, 4.0], [2.0, 1.0]])]),
    "Filter": ("", [_x(), torch.tensor([1.0, 0.0])]),
    "HingeLoss": ("", [_x(2, 3), torch.tensor([0.0, 2.0])]),
    "Im2col": ("convolution_param { kernel_size: 2 }", None),
    "InfogainLoss": ("", [torch.softmax(_x(2, 3), 1), torch.tensor([0.0, 2.0]), torch.eye(3).reshape(1, 1, 3, 3)]),
    "InnerProduct": ("inner_product_param { num_output: 4 weight_filler { type: 'gaussian' } }", None),
    "Interp": ("interp_param { zoom_factor: 2 }", None),
    "Log": ("", [torch.rand(2, 3, 5, 5) + 0.1]),
    "MultinomialLogisticLoss": ("", [torch.softmax(_x(2, 3), 1), torch.tensor([0.0, 2.0])]),
    "Padding": ("padding_param { pad_beg: 1 pad_end: -1 }", None),
    "Parameter": ("parameter_param { shape { dim: 2 dim: 3 } }", []),
    "Pooling": ("pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }", None),
    "Power": ("power_param { power: 2 shift: 1 }", None),
    "Reshape": ("reshape_param { shape { dim: 0 dim: -1 } }", None),
    "Scale": ("scale_param { bias_term: true }", [_x(), _x(3)]),
    "SegAccuracy": ("seg_accuracy_param { ignore_label: 255 }", [_x(), _labels()]),
    "SigmoidCrossEntropyLoss": ("", [_x(2, 3), torch.randint(0, 2, (2, 3)).float()]),
    "SoftmaxWithLoss": ("loss_param { ignore_label: 255 }", [_x(), _labels()]),
    "SPP": ("spp_param { pyramid_height: 2 }", None),
    "Tile": ("tile_param { tiles: 2 }", None),
    "RNN": ("recurrent_param { num_output: 3 weight_filler { type: 'gaussian' } }",
            [_x(2, 3, 5), torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])]),
    "LSTM": ("recurrent_param { num_output: 3 weight_filler { type: 'gaussian' } }",
             [_x(2, 3, 5), torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])]),
    "LSTMUnit": ("", [_x(1, 3, 2), _x(1, 3, 8), torch.tensor([[1.0, 0.0, 1.0]])]),
    # the fork's weak-supervision and channel layers (tests/caffe/test_layers_weak.py, test_fork_golden.py)
    "AdaptiveBiasChannel": ("", [_x(), torch.tensor([0.0, 2.0, 1.0, -1.0]).reshape(2, 2, 1, 1)]),
    "BiasChannel": ("", [_x(), torch.tensor([0.0, 2.0, 1.0, -1.0]).reshape(2, 2, 1, 1)]),
    "CensorLabel": ("censor_label_param { ignore_label: 255 }",
                    [_labels(), torch.tensor([0.0, 2.0, 1.0, -1.0]).reshape(2, 2, 1, 1)]),
    "ChannelAggregator": (f'channel_aggregator_param {{ label_map_file: "{FIXTURES}/golden/fork/data/label_map.txt" }}',
                          [_x(2, 5, 3, 3)]),
    "GainChannel": ('gain_channel_param { num_output_nz: 2 gain_filler { type: "uniform" min: 0.5 max: 1.5 } }', None),
    "Histogram": ("histogram_param { num_labels: 3 ignore_label: 255 }", [_labels()]),
    "IgnoreOverlay": ("ignore_overlay_param { ignore_label: 255 }", [_labels(), _labels(ignore=False)]),
    "OneHot": ("onehot_param { num_labels: 3 }", [_labels(2, 3, 5, 5, ignore=False).repeat(1, 3, 1, 1)]),
    "RelativeError": ("", [_x(), _x()]),
    "UniqueLabel": ("unique_label_param { max_labels: 5 ignore_label: 255 }", [_labels()]),
    "BN": ('bn_param { scale_filler { type: "constant" value: 2 } shift_filler { type: "constant" value: 1 } }', None),
    "Upsample": ("upsample_param { scale: 2 }",
                 [_x(2, 3, 2, 2), F.max_pool2d(_x(2, 3, 4, 4), 2, return_indices=True)[1].float()]),
}
REGISTRY_SKIP = {
    "Data": "a data layer: its tops are read by caffe.data.sources (tests/caffe/test_data_layers.py)",
    "HDF5Data": "a data layer: its tops are read by caffe.data.sources (tests/caffe/test_data_layers.py)",
    "HDF5Output": "writes a file (tests/caffe/test_data_layers.py)",
    "ImageData": "a data layer: its tops are read by caffe.data.sources (tests/caffe/test_data_layers.py)",
    "MemoryData": "a data layer: pycaffe's set_input_arrays fills it (tests/caffe/test_data_layers.py)",
    "WindowData": "a data layer: its tops are read by caffe.data.window_data (tests/caffe/test_data_layers.py)",
    "DenseImageData": "a data layer: its tops are read by caffe.data.dense_image_data (tests/caffe/test_layers_segnet.py)",
    "ImageSegData": "a data layer: its tops are fed by caffe.data.image_seg, not computed",
    "Input": "a data layer: its tops are fed by the caller",
    "MatWrite": "writes files (tested in test_extract)",
    "MatRead": "reads files (tests/caffe/test_layers_weak.py)",
    "Python": "needs a user module on sys.path (tested with the Python layer)",
}


@pytest.mark.parametrize("type_name", sorted(REGISTRY))
def test_every_layer_declares_the_shapes_it_produces_and_ignores_grad_mode(type_name):
    """Declared top shapes equal the produced ones; forward with gradients on equals forward
    with them off (no layer behaves differently when autograd records)."""
    if type_name in REGISTRY_SKIP:
        pytest.skip(REGISTRY_SKIP[type_name])
    cls = REGISTRY[type_name]
    params, bottoms = REGISTRY_EXAMPLES.get(type_name, ("", None))
    if bottoms is None:
        n = max(cls.exact_num_bottom_blobs, cls.min_bottom_blobs, 1)
        bottoms = [_x() for _ in range(n)]
    tops = max(cls.exact_num_top_blobs, cls.min_top_blobs, 0 if cls.exact_num_top_blobs == 0 else 1)
    text = (f'name: "x" type: "{type_name}" {params} '
            + "".join(f'bottom: "b{i}" ' for i in range(len(bottoms)))
            + ("".join(f'top: "t{i}" ' for i in range(tops)) if cls.equal_num_bottom_top_blobs is False
               else "".join(f'top: "t{i}" ' for i in range(len(bottoms)))))
    torch.manual_seed(0)
    lay = layer(text, *[tuple(b.shape) for b in bottoms])
    with torch.no_grad():
        off = lay(*[b.clone() for b in bottoms])
    on = lay(*[b.clone().requires_grad_(b.is_floating_point()) for b in bottoms])
    assert len(off) == len(on) == len(lay.top_shapes) == lay.top_count
    for i, (a, b, declared) in enumerate(zip(off, on, lay.top_shapes)):
        # None: a size only the data decides (Filter's count)
        assert len(a.shape) == len(declared) and all(d is None or d == x for d, x in zip(declared, a.shape)), \
            f"top {i}: produced {tuple(a.shape)}, declared {declared}"
        assert torch.allclose(a, b.detach(), equal_nan=True), f"top {i} differs with gradients on"
