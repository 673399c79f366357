"""BVLC Caffe golden cases: one small net per layer configuration and one run per solver type.

This module imports neither torch nor any ``caffe``: :func:`run_layer_case` and
:func:`run_solver_case` take the pycaffe module to drive, so the same code produced the fixtures
under BVLC Caffe's own pycaffe (``tools/make_bvlc_golden.py``) and replays them on this
project's ``caffe`` (``tests/caffe/test_bvlc_golden.py``). Inputs, top diffs and parameter values come
from numpy seeded per case; Caffe's fillers only matter where a case keeps them.
"""
from __future__ import annotations

import os
import tempfile
import zlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LayerCase:
    """One layer under test: its prototxt body, its bottoms, and how to run it."""
    name: str
    body: str                         # the layer's text without name/bottom/top
    bottoms: dict                     # blob name -> (kind, shape, *args) for make_input
    tops: int = 1
    phase: str = "TEST"
    backward: bool = True             # run Net::Backward (force_backward)
    loss: bool = False                # top 0 is a loss: its diff is Caffe's loss weight
    loss_weight: float = 1.0          # ... which pycaffe must be given when the layer has more tops
    params: dict = field(default_factory=dict)   # blob index -> (kind, *args): numpy values set before forward
    force_backward: bool = True
    files: str = ""                   # data folder the net reads from (cwd while it runs)
    feed: str = ""                    # "memory": MemoryData fed through set_input_arrays;
                                      # "hdf5out": the file HDF5Output wrote is read back
    passes: int = 1                   # forward passes (data layers: the order of batches)
    learned: tuple = ()               # bottoms fed by a Parameter layer, not Input: they get diffs
                                      # without force_backward (which Caffe refuses for index bottoms)
    refused: str = ""                 # BVLC Caffe refuses the net (a failed CHECK): so must we, with
                                      # a CaffeError matching this pattern


def make_input(spec, rng):
    """A float32 array of ``spec`` = (kind, shape, *args)."""
    kind, shape, *args = spec
    if kind == "normal":
        return rng.normal(0, 1, shape).astype(np.float32)
    if kind == "uniform":
        lo, hi = args
        return rng.uniform(lo, hi, shape).astype(np.float32)
    if kind == "ints":
        lo, hi = args
        return rng.integers(lo, hi, shape).astype(np.float32)
    if kind == "away":   # |x| >= 0.1: kinks (ReLU, AbsVal, max) never at a tie
        x = rng.uniform(0.1, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        return x.astype(np.float32)
    if kind == "distinct":   # all values distinct (max pooling / argmax without ties)
        x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 0.5 * 0.01 * np.prod(shape)
        return x.astype(np.float32)
    if kind == "probs":      # softmax over axis 1
        x = np.exp(rng.normal(0, 1, shape))
        return (x / x.sum(axis=1, keepdims=True)).astype(np.float32)
    if kind == "values":
        return np.asarray(args[0], np.float32).reshape(shape)
    raise ValueError(f"unknown input kind {kind}")


def case_seed(name: str) -> int:
    """A seed fixed by the case's name."""
    return zlib.crc32(name.encode())


def net_text(case: LayerCase) -> str:
    """The case's net: Input layers for its bottoms, then the layer."""
    lines = [f'name: "{case.name}"', f"force_backward: {'true' if case.force_backward else 'false'}"]
    for blob, spec in case.bottoms.items():
        dims = " ".join(f"dim: {d}" for d in spec[1])
        if blob in case.learned:
            lines.append(f'layer {{ name: "in_{blob}" type: "Parameter" top: "{blob}" '
                         f'parameter_param {{ shape {{ {dims} }} }} }}')
        else:
            lines.append(f'layer {{ name: "in_{blob}" type: "Input" top: "{blob}" input_param {{ shape {{ {dims} }} }} }}')
    bottoms = " ".join(f'bottom: "{b}"' for b in case.bottoms)
    tops = " ".join(f'top: "t{i}"' for i in range(case.tops))
    lines.append(f'layer {{ name: "L" {bottoms} {tops} {case.body} }}')
    return "\n".join(lines) + "\n"


def _param_value(spec, shape, rng):
    kind, *args = spec
    if kind == "normal":
        return rng.normal(0, args[0] if args else 1.0, shape).astype(np.float32)
    if kind == "uniform":
        return rng.uniform(args[0], args[1], shape).astype(np.float32)
    if kind == "values":
        return np.asarray(args[0], np.float32).reshape(shape)
    raise ValueError(f"unknown param kind {kind}")


def write_net(name: str, text: str) -> str:
    """``text`` written to ``<name>.prototxt`` in a new temporary folder; its path."""
    path = os.path.join(tempfile.mkdtemp(), name + ".prototxt")
    with open(path, "w") as f:
        f.write(text)
    return path


def run_layer_case(caffe, case: LayerCase, workdir: str, given=None) -> dict:
    """Run ``case`` through ``caffe`` (a pycaffe module); every array a golden file holds.
    ``given`` (a golden file) supplies the layer's parameters, which Caffe's fillers drew."""
    rng = np.random.default_rng(case_seed(case.name))
    text = net_text(case)
    out = {"prototxt": np.array(text)}
    path = write_net(case.name, text)
    here = os.getcwd()
    os.chdir(os.path.join(workdir, case.files) if case.files else workdir)
    try:
        net = caffe.Net(path, caffe.TRAIN if case.phase == "TRAIN" else caffe.TEST)
        for blob, spec in case.bottoms.items():
            x = make_input(spec, rng)
            (net.params[f"in_{blob}"][0] if blob in case.learned else net.blobs[blob]).data[...] = x
            out[f"input/{blob}"] = x
        if case.params:
            blobs = net.params["L"]
            for i, spec in case.params.items():
                blobs[i].data[...] = _param_value(spec, blobs[i].data.shape, rng)
        if given is not None and "L" in net.params:
            for i, blob in enumerate(net.params["L"]):
                blob.data[...] = given[f"param/{i}"]
        for i, blob in enumerate(net.params["L"] if "L" in net.params else []):
            out[f"param/{i}"] = np.array(blob.data)
        if case.feed == "memory":
            shape = tuple(net.blobs["t0"].data.shape)
            data = rng.normal(0, 1, (2 * shape[0],) + shape[1:]).astype(np.float32)
            labels = np.arange(2 * shape[0], dtype=np.float32)
            net.set_input_arrays(data, labels)
            out["memory/data"], out["memory/labels"] = data, labels
        for p in range(case.passes):
            net.forward()
            for i in range(case.tops):
                out[f"top{p}/t{i}" if p else f"top/t{i}"] = np.array(net.blobs[f"t{i}"].data)
        if case.backward:
            diffs = {}
            for i in range(case.tops):
                if case.loss and i == 0:
                    if case.tops > 1:   # pycaffe takes a diff for every output or none
                        diffs["t0"] = np.full(net.blobs["t0"].data.shape, case.loss_weight, np.float32)
                    continue
                d = rng.normal(0, 1, net.blobs[f"t{i}"].data.shape).astype(np.float32)
                diffs[f"t{i}"] = d
                out[f"topdiff/t{i}"] = d
            net.backward(**diffs)
            for blob in case.bottoms:
                out[f"diff/{blob}"] = np.array(net.blobs[blob].diff)
            if "L" in net.params:
                for i, blob in enumerate(net.params["L"]):
                    out[f"paramdiff/{i}"] = np.array(blob.diff)
        if "L" in net.params:
            for i, blob in enumerate(net.params["L"]):
                out[f"paramafter/{i}"] = np.array(blob.data)
        if case.feed == "hdf5out":
            del net   # Caffe closes the file in the layer's destructor
            import h5py
            with h5py.File(HDF5_OUTPUT, "r") as f:
                for key in f:
                    out[f"written/{key}"] = np.array(f[key])
            os.remove(HDF5_OUTPUT)
    finally:
        os.chdir(here)
    return out


# ----------------------------------------------------------------------------------------------
# The cases.

HDF5_OUTPUT = "hdf5_output.h5"
DATA_DIR = "data"
DATA = dict(backward=False, force_backward=False, files=DATA_DIR, passes=2)
SECOND_TOP = r"\(SoftmaxWithLoss\): a second \(probability\) top is refused"


def _cases() -> list:
    C = LayerCase
    x4 = ("normal", (2, 3, 5, 4))
    away = ("away", (2, 3, 5, 4))
    pos = ("uniform", (2, 3, 5, 4), 0.2, 2.0)
    cases = [
        # neurons
        C("absval", 'type: "AbsVal"', {"x": away}),
        C("bnll", 'type: "BNLL"', {"x": x4}),
        C("clip", 'type: "Clip" clip_param { min: -0.5 max: 0.7 }', {"x": away}),
        C("elu", 'type: "ELU" elu_param { alpha: 0.7 }', {"x": away}),
        C("exp", 'type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.3 }', {"x": x4}),
        C("exp_e", 'type: "Exp"', {"x": x4}),
        C("log", 'type: "Log" log_param { base: 10 scale: 2 shift: 0.1 }', {"x": pos}),
        C("log_e", 'type: "Log"', {"x": pos}),
        C("power", 'type: "Power" power_param { power: 2.5 scale: 1.5 shift: 0.2 }', {"x": pos}),
        C("power_int", 'type: "Power" power_param { power: 3 scale: -0.5 shift: 0.1 }', {"x": x4}),
        C("power_zero", 'type: "Power" power_param { power: 0 scale: 2 shift: 1 }', {"x": x4}),
        C("relu", 'type: "ReLU"', {"x": away}),
        C("relu_leaky", 'type: "ReLU" relu_param { negative_slope: 0.1 }', {"x": away}),
        C("prelu", 'type: "PReLU"', {"x": away}, params={0: ("uniform", -0.5, 0.5)}),
        C("prelu_shared", 'type: "PReLU" prelu_param { channel_shared: true }', {"x": away},
          params={0: ("values", [0.3])}),
        C("sigmoid", 'type: "Sigmoid"', {"x": x4}),
        C("swish", 'type: "Swish" swish_param { beta: 1.5 }', {"x": x4}),
        C("tanh", 'type: "TanH"', {"x": x4}),
        C("threshold", 'type: "Threshold" threshold_param { threshold: 0.2 }', {"x": away}, backward=False,
          force_backward=False),
        C("dropout_test", 'type: "Dropout" dropout_param { dropout_ratio: 0.3 }', {"x": x4}),
        C("dropout_train_zero", 'type: "Dropout" dropout_param { dropout_ratio: 0 }', {"x": x4}, phase="TRAIN"),
        # vision
        C("conv", 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 '
          'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } }',
          {"x": ("normal", (2, 3, 7, 6))}),
        C("conv_group_dilation", 'type: "Convolution" convolution_param { num_output: 4 group: 2 '
          'kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 0 dilation: 2 bias_term: false '
          'weight_filler { type: "gaussian" std: 0.3 } }', {"x": ("normal", (2, 4, 7, 6))}),
        C("conv_3d", 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 kernel_size: 3 '
          'kernel_size: 2 stride: 2 stride: 1 stride: 1 pad: 1 pad: 0 pad: 1 '
          'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } }',
          {"x": ("normal", (2, 3, 4, 5, 3))}),
        C("conv_1d", 'type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 pad: 1 dilation: 2 '
          'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } }',
          {"x": ("normal", (2, 2, 9))}),
        C("deconv", 'type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 4 stride: 2 pad: 1 '
          'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } }',
          {"x": ("normal", (2, 2, 4, 3))}),
        C("deconv_group", 'type: "Deconvolution" convolution_param { num_output: 4 group: 2 kernel_size: 3 '
          'stride: 2 dilation: 2 bias_term: false weight_filler { type: "gaussian" std: 0.3 } }',
          {"x": ("normal", (1, 4, 3, 4))}),
        C("deconv_3d", 'type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 2 stride: 2 '
          'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } }',
          {"x": ("normal", (1, 2, 2, 3, 2))}),
        C("im2col", 'type: "Im2col" convolution_param { kernel_size: 3 stride: 2 pad: 1 dilation: 1 }',
          {"x": ("normal", (2, 2, 5, 6))}),
        C("im2col_dilated", 'type: "Im2col" convolution_param { kernel_h: 2 kernel_w: 3 dilation: 2 }',
          {"x": ("normal", (1, 3, 6, 7))}),
        C("lrn_across", 'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }',
          {"x": ("normal", (2, 5, 3, 3))}),
        C("lrn_within", 'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }',
          {"x": ("normal", (2, 2, 5, 4))}),
        C("pool_max", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }',
          {"x": ("distinct", (2, 2, 7, 6))}, tops=2),
        C("pool_max_ceil", 'type: "Pooling" pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 stride: 2 }',
          {"x": ("distinct", (1, 2, 7, 8))}),
        C("pool_ave", 'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
          {"x": ("normal", (2, 2, 7, 6))}),
        C("pool_global", 'type: "Pooling" pooling_param { pool: AVE global_pooling: true }',
          {"x": ("normal", (2, 3, 4, 5))}),
        C("spp_max", 'type: "SPP" spp_param { pyramid_height: 3 pool: MAX }', {"x": ("distinct", (2, 2, 8, 9))}),
        C("spp_pad_not_below_kernel", 'type: "SPP" spp_param { pyramid_height: 3 pool: MAX }',
          {"x": ("distinct", (2, 2, 7, 5))}, refused="pad must be smaller than the kernel"),
        C("spp_ave", 'type: "SPP" spp_param { pyramid_height: 2 pool: AVE }', {"x": ("normal", (1, 3, 6, 6))}),
        C("crop", 'type: "Crop" crop_param { axis: 2 offset: 1 offset: 2 }',
          {"x": ("normal", (2, 2, 6, 7)), "ref": ("normal", (1, 1, 3, 4))}),
        C("crop_axis1", 'type: "Crop" crop_param { axis: 1 offset: 1 }',
          {"x": ("normal", (2, 4, 5, 5)), "ref": ("normal", (2, 2, 3, 2))}),
        # common
        C("inner_product", 'type: "InnerProduct" inner_product_param { num_output: 4 '
          'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } }',
          {"x": ("normal", (3, 2, 2, 3))}),
        C("inner_product_axis2_transpose", 'type: "InnerProduct" inner_product_param { num_output: 3 axis: 2 '
          'transpose: true bias_term: false weight_filler { type: "gaussian" std: 0.3 } }',
          {"x": ("normal", (2, 3, 4, 2))}),
        C("embed", 'type: "Embed" embed_param { num_output: 3 input_dim: 5 '
          'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } }',
          {"x": ("ints", (2, 4), 0, 5)}, force_backward=False),
        C("batchnorm_global", 'type: "BatchNorm" batch_norm_param { use_global_stats: true eps: 0.001 }',
          {"x": x4}, params={0: ("normal", 1.0), 1: ("uniform", 0.5, 2.0), 2: ("values", [2.5])}),
        C("batchnorm_train", 'type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 }',
          {"x": x4}, phase="TRAIN", params={0: ("normal", 1.0), 1: ("uniform", 0.5, 2.0), 2: ("values", [1.7])}),
        C("scale_learned", 'type: "Scale" scale_param { bias_term: true '
          'filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "gaussian" std: 0.1 } }', {"x": x4}),
        C("scale_two_bottoms", 'type: "Scale" scale_param { axis: 0 }',
          {"x": x4, "s": ("normal", (2, 3))}),
        C("scale_axis0_numaxes", 'type: "Scale" scale_param { axis: 0 num_axes: 1 bias_term: true '
          'filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }', {"x": x4}),
        C("bias_learned", 'type: "Bias" bias_param { num_axes: 2 filler { type: "gaussian" std: 1 } }', {"x": x4}),
        C("bias_two_bottoms", 'type: "Bias" bias_param { axis: 2 }', {"x": x4, "b": ("normal", (5, 4))}),
        C("mvn", 'type: "MVN"', {"x": x4}),
        C("mvn_across_mean_only", 'type: "MVN" mvn_param { across_channels: true normalize_variance: false }',
          {"x": x4}),
        C("mvn_eps", 'type: "MVN" mvn_param { eps: 0.01 across_channels: true }', {"x": x4}),
        C("softmax", 'type: "Softmax"', {"x": x4}),
        C("softmax_axis2", 'type: "Softmax" softmax_param { axis: 2 }', {"x": x4}),
        C("argmax", 'type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', {"x": ("distinct", (3, 6))},
          backward=False, force_backward=False),
        C("argmax_axis", 'type: "ArgMax" argmax_param { axis: 1 top_k: 2 }', {"x": ("distinct", (2, 4, 3, 2))},
          backward=False, force_backward=False),
        C("accuracy", 'type: "Accuracy"', {"x": ("distinct", (6, 4)), "y": ("ints", (6,), 0, 4)},
          backward=False, force_backward=False),
        C("accuracy_topk_ignore_perclass", 'type: "Accuracy" accuracy_param { top_k: 2 ignore_label: 1 }',
          {"x": ("distinct", (2, 4, 3, 3)), "y": ("ints", (2, 1, 3, 3), 0, 4)}, tops=2,
          backward=False, force_backward=False),
        C("reduction_sum", 'type: "Reduction" reduction_param { operation: SUM axis: 1 coeff: 0.5 }', {"x": x4}),
        C("reduction_asum", 'type: "Reduction" reduction_param { operation: ASUM axis: 2 }', {"x": away}),
        C("reduction_sumsq", 'type: "Reduction" reduction_param { operation: SUMSQ axis: 1 }', {"x": x4}),
        C("reduction_mean", 'type: "Reduction" reduction_param { operation: MEAN axis: -1 coeff: 2 }', {"x": x4}),
        C("eltwise_sum_coeff", 'type: "Eltwise" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }',
          {"a": x4, "b": x4}),
        C("eltwise_prod", 'type: "Eltwise" eltwise_param { operation: PROD }', {"a": x4, "b": x4, "c": x4}),
        C("eltwise_max", 'type: "Eltwise" eltwise_param { operation: MAX }',
          {"a": ("distinct", (2, 3, 5, 4)), "b": x4}),
        C("concat", 'type: "Concat"', {"a": x4, "b": ("normal", (2, 2, 5, 4))}),
        C("concat_axis0", 'type: "Concat" concat_param { axis: 0 }', {"a": x4, "b": ("normal", (1, 3, 5, 4))}),
        C("slice", 'type: "Slice" slice_param { axis: 1 slice_point: 1 slice_point: 4 }',
          {"x": ("normal", (2, 6, 3, 2))}, tops=3),
        C("slice_even_axis2", 'type: "Slice" slice_param { axis: 2 }', {"x": ("normal", (2, 2, 6, 2))}, tops=3),
        C("split", 'type: "Split"', {"x": x4}, tops=3),
        C("flatten", 'type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', {"x": x4}),
        C("reshape", 'type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } }', {"x": x4}),
        C("reshape_axis_numaxes", 'type: "Reshape" reshape_param { axis: 1 num_axes: 1 shape { dim: 3 dim: 1 } }',
          {"x": x4}),
        C("tile", 'type: "Tile" tile_param { axis: 2 tiles: 3 }', {"x": ("normal", (2, 2, 2, 3))}),
        C("batch_reindex", 'type: "BatchReindex"',
          {"x": ("normal", (4, 2, 3)), "i": ("values", (5,), [3, 0, 3, 1, 3])}, learned=("x",), force_backward=False),
        C("filter", 'type: "Filter"', {"x": ("normal", (4, 2, 3)), "s": ("values", (4,), [1, 0, 1, 1])},
          learned=("x",), force_backward=False),
        C("filter_two", 'type: "Filter"', {"x": ("normal", (4, 3)), "y": ("normal", (4, 2)),
                                          "s": ("values", (4, 1), [0, 1, 0, 1])}, tops=2,
          learned=("x", "y"), force_backward=False),
        C("silence", 'type: "Silence"', {"x": x4}, tops=0),
        C("parameter", 'type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }', {}, params={0: ("normal",)}),
        # losses
        C("softmax_loss", 'type: "SoftmaxWithLoss" loss_param { ignore_label: 2 }',
          {"x": x4, "y": ("ints", (2, 1, 5, 4), 0, 3)}, loss=True),
        C("softmax_loss_batch", 'type: "SoftmaxWithLoss" loss_param { normalization: BATCH_SIZE }',
          {"x": x4, "y": ("ints", (2, 1, 5, 4), 0, 3)}, loss=True),
        # BVLC refuses a second (prob) top: without loss weights LossLayer adds one for two tops,
        # with two its inner Softmax layer gets both for its one top
        C("softmax_loss_prob_top", 'type: "SoftmaxWithLoss"',
          {"x": x4, "y": ("ints", (2, 1, 5, 4), 0, 3)}, tops=2, loss=True, refused=SECOND_TOP),
        C("softmax_loss_two_loss_weights", 'type: "SoftmaxWithLoss" loss_weight: 2 loss_weight: 0',
          {"x": x4, "y": ("ints", (2, 1, 5, 4), 0, 3)}, tops=2, loss=True, loss_weight=2, refused=SECOND_TOP),
        C("softmax_loss_weight", 'type: "SoftmaxWithLoss" loss_weight: 2.5', {"x": x4, "y": ("ints", (2, 1, 5, 4), 0, 3)},
          loss=True),
        C("softmax_loss_none_axis", 'type: "SoftmaxWithLoss" softmax_param { axis: 2 } '
          'loss_param { normalization: NONE }', {"x": ("normal", (2, 3, 4)), "y": ("ints", (2, 3), 0, 4)},
          loss=True),
        C("euclidean_loss", 'type: "EuclideanLoss"', {"a": x4, "b": x4}, loss=True),
        C("sigmoid_ce_loss", 'type: "SigmoidCrossEntropyLoss" loss_weight: 3',
          {"x": ("normal", (2, 3, 2, 2)), "t": ("uniform", (2, 3, 2, 2), 0, 1)}, loss=True),
        C("sigmoid_ce_loss_ignore", 'type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: 1 '
          'normalization: VALID }', {"x": ("normal", (2, 3, 2, 2)), "t": ("ints", (2, 3, 2, 2), 0, 2)},
          loss=True),
        C("hinge_l1", 'type: "HingeLoss"', {"x": ("normal", (4, 5)), "y": ("ints", (4,), 0, 5)}, loss=True),
        C("hinge_l2", 'type: "HingeLoss" hinge_loss_param { norm: L2 }',
          {"x": ("normal", (4, 5)), "y": ("ints", (4,), 0, 5)}, loss=True),
        C("infogain_loss", 'type: "InfogainLoss"',
          {"p": ("probs", (4, 3)), "y": ("ints", (4,), 0, 3), "h": ("uniform", (1, 1, 3, 3), 0, 1)}, loss=True,
          learned=("p",), force_backward=False),
        C("infogain_force_backward", 'type: "InfogainLoss"',
          {"p": ("probs", (4, 3)), "y": ("ints", (4,), 0, 3), "h": ("uniform", (1, 1, 3, 3), 0, 1)}, loss=True,
          refused=r"cannot backpropagate to bottom 2 \(the infogain matrix\)"),
        C("infogain_loss_axis", 'type: "InfogainLoss" infogain_loss_param { axis: 1 } loss_param { ignore_label: 0 }',
          {"p": ("probs", (2, 3, 2, 2)), "y": ("ints", (2, 1, 2, 2), 0, 3), "h": ("uniform", (3, 3), 0, 1)},
          loss=True, learned=("p",), force_backward=False),
        C("contrastive_loss", 'type: "ContrastiveLoss" contrastive_loss_param { margin: 2 }',
          {"a": ("normal", (6, 3, 1, 1)), "b": ("normal", (6, 3, 1, 1)), "s": ("values", (6, 1, 1, 1),
                                                                            [1, 0, 0, 1, 0, 0])}, loss=True),
        C("contrastive_loss_legacy", 'type: "ContrastiveLoss" contrastive_loss_param { margin: 2 '
          'legacy_version: true }', {"a": ("normal", (6, 3, 1, 1)), "b": ("normal", (6, 3, 1, 1)),
                                     "s": ("values", (6, 1, 1, 1), [1, 0, 0, 1, 0, 0])}, loss=True),
        C("multinomial_logistic_loss", 'type: "MultinomialLogisticLoss"',
          {"p": ("probs", (4, 5, 1, 1)), "y": ("ints", (4, 1, 1, 1), 0, 5)}, loss=True),
        # recurrent
        C("rnn", 'type: "RNN" recurrent_param { num_output: 3 weight_filler { type: "gaussian" std: 0.4 } '
          'bias_filler { type: "gaussian" std: 0.2 } }',
          {"x": ("normal", (4, 2, 3)), "c": ("values", (4, 2), [0, 0, 1, 1, 1, 0, 1, 1])}),
        C("lstm", 'type: "LSTM" recurrent_param { num_output: 3 weight_filler { type: "gaussian" std: 0.4 } '
          'bias_filler { type: "gaussian" std: 0.2 } }',
          {"x": ("normal", (4, 2, 2)), "c": ("values", (4, 2), [0, 0, 1, 1, 1, 0, 1, 1])}),
        C("lstm_static_expose", 'type: "LSTM" recurrent_param { num_output: 2 expose_hidden: true '
          'weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "gaussian" std: 0.2 } }',
          {"x": ("normal", (3, 2, 2)), "c": ("values", (3, 2), [1, 0, 1, 1, 0, 1]),
           "h0": ("normal", (1, 2, 2)), "c0": ("normal", (1, 2, 2))}, tops=3),
        C("rnn_static", 'type: "RNN" recurrent_param { num_output: 2 weight_filler { type: "gaussian" std: 0.4 } '
          'bias_filler { type: "gaussian" std: 0.2 } }',
          {"x": ("normal", (3, 2, 2)), "c": ("values", (3, 2), [0, 0, 1, 1, 1, 1]), "s": ("normal", (2, 3))}),
        C("lstm_unit", 'type: "LSTMUnit"', {"c": ("normal", (1, 2, 3)), "x": ("normal", (1, 2, 12)),
                                           "k": ("values", (1, 2), [1, 0])}, tops=2),
        # data (the files under DATA_DIR are made by tools/make_bvlc_golden.py, with the fixtures)
        C("hdf5_output", f'type: "HDF5Output" hdf5_output_param {{ file_name: "{HDF5_OUTPUT}" }}',
          {"d": ("normal", (3, 2, 2)), "l": ("normal", (3, 1))}, tops=0, backward=False, force_backward=False,
          feed="hdf5out"),
        C("data_lmdb", 'type: "Data" data_param { source: "lmdb" backend: LMDB batch_size: 4 } '
          'transform_param { crop_size: 5 mean_value: 100 mean_value: 110 mean_value: 120 scale: 0.01 }',
          {}, tops=2, **DATA),
        C("data_lmdb_encoded_train", 'type: "Data" data_param { source: "lmdb_encoded" backend: LMDB batch_size: 4 } '
          'transform_param { scale: 0.5 }', {}, tops=2, phase="TRAIN", **DATA),
        C("data_leveldb_gray_mean_file", 'type: "Data" data_param { source: "leveldb" backend: LEVELDB batch_size: 3 } '
          'transform_param { force_gray: true mean_file: "mean_gray.binaryproto" crop_size: 4 }', {}, tops=2,
          **DATA),
        C("image_data", 'type: "ImageData" image_data_param { source: "images.txt" root_folder: "img/" '
          'batch_size: 4 new_height: 6 new_width: 5 } transform_param { mean_value: 120 mean_value: 110 '
          'mean_value: 100 }', {}, tops=2, **DATA),
        C("image_data_gray_crop", 'type: "ImageData" image_data_param { source: "images.txt" root_folder: "img/" '
          'batch_size: 2 is_color: false } transform_param { crop_size: 3 scale: 0.1 }', {}, tops=2, **DATA),
        C("hdf5_data", 'type: "HDF5Data" hdf5_data_param { source: "h5list.txt" batch_size: 4 }', {}, tops=2,
          **DATA),
        C("window_data", 'type: "WindowData" window_data_param { source: "windows.txt" batch_size: 2 '
          'fg_threshold: 0.5 bg_threshold: 0.5 fg_fraction: 1.0 context_pad: 1 crop_mode: "warp" } '
          'transform_param { crop_size: 4 mean_value: 100 mean_value: 110 mean_value: 120 }', {}, tops=2,
          **DATA),
        C("memory_data", 'type: "MemoryData" memory_data_param { batch_size: 2 channels: 3 height: 2 width: 2 }',
          {}, tops=2, backward=False, force_backward=False, feed="memory", passes=2),
        C("dummy_constant", 'type: "DummyData" dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 } '
          'data_filler { type: "constant" value: 1.5 } data_filler { type: "constant" value: -2 } }', {}, tops=2,
          backward=False, force_backward=False),
    ]
    return cases


LAYER_CASES = _cases()


# ----------------------------------------------------------------------------------------------
# Solvers: one small net (two convolutions, a frozen branch, SoftmaxWithLoss) trained 7
# iterations of iter_size 2 by each update rule; the weights after each iteration and Caffe's
# own snapshot are the golden data.

SOLVER_NET = """name: "golden_solver"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 6 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 dim: 1 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 5 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.2 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc8" type: "Convolution" bottom: "conv1" top: "fc8"
  param { lr_mult: 10 decay_mult: 1 } param { lr_mult: 20 decay_mult: 0 }
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0 } } }
layer { name: "frozen" type: "Convolution" bottom: "data" top: "frozen"
  param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "sum" type: "Eltwise" bottom: "fc8" bottom: "frozen" top: "sum" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "sum" bottom: "label" top: "loss" loss_param { ignore_label: 255 } }
"""

_SOLVER_COMMON = """net: "train.prototxt"
iter_size: 2
max_iter: 7
display: 1
snapshot: 7
snapshot_prefix: "snap"
random_seed: 1
solver_mode: CPU
"""

SOLVER_CASES = {
    "sgd_exp_l1": 'type: "SGD" base_lr: 0.05 lr_policy: "exp" gamma: 0.9 momentum: 0.8 weight_decay: 0.01 '
                  'regularization_type: "L1"',
    "sgd_inv": 'type: "SGD" base_lr: 0.05 lr_policy: "inv" gamma: 0.5 power: 0.75 momentum: 0.9 weight_decay: 0.001',
    "sgd_sigmoid": 'type: "SGD" base_lr: 0.05 lr_policy: "sigmoid" gamma: 0.5 stepsize: 3 momentum: 0.9',
    "nesterov": 'type: "Nesterov" base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 3 momentum: 0.9 '
                'weight_decay: 0.0005',
    "adagrad": 'type: "AdaGrad" base_lr: 0.05 lr_policy: "fixed" delta: 1e-6 weight_decay: 0.0005',
    "rmsprop": 'type: "RMSProp" base_lr: 0.01 lr_policy: "fixed" rms_decay: 0.95 delta: 1e-6 weight_decay: 0.0005',
    "adadelta": 'type: "AdaDelta" base_lr: 1.0 lr_policy: "fixed" momentum: 0.95 delta: 1e-6 weight_decay: 0.0005',
    "adam": 'type: "Adam" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 momentum2: 0.999 delta: 1e-8 '
            'weight_decay: 0.0005',
    "adam_solver_type_enum": 'solver_type: ADAM base_lr: 0.01 lr_policy: "poly" power: 1 momentum: 0.9 '
                             'momentum2: 0.99',
}


def solver_text(name: str) -> str:
    """The solver.prototxt of solver case ``name``."""
    return _SOLVER_COMMON + SOLVER_CASES[name] + "\n"


def solver_batch(name: str, t: int):
    """The (data, label) fed at iteration ``t`` of solver case ``name`` (label 255 = ignore)."""
    rng = np.random.default_rng(case_seed(f"{name}/{t}"))
    data = rng.normal(0, 1, (4, 3, 6, 6)).astype(np.float32)
    label = rng.integers(0, 3, (4, 1, 6, 6)).astype(np.float32)
    label[rng.random(label.shape) < 0.1] = 255
    return data, label


def run_solver_case(caffe, name: str, workdir: str, init: str | None = None) -> dict:
    """Train solver case ``name`` in ``workdir`` through ``caffe`` (a pycaffe module): write its
    prototxts, save init.caffemodel, run 7 iterations fed by :func:`solver_batch`, snapshot;
    return the losses and the weights after each iteration. With ``init`` the run starts from
    those weights instead (a replay of Caffe's run: fillers draw from another generator)."""
    here = os.getcwd()
    os.chdir(workdir)
    try:
        with open("train.prototxt", "w") as f:
            f.write(SOLVER_NET)
        with open("solver.prototxt", "w") as f:
            f.write(solver_text(name))
        solver = caffe.get_solver("solver.prototxt")
        if init:
            solver.net.copy_from(init)
        else:
            solver.net.save("init.caffemodel")
        out = {}
        for t in range(7):
            data, label = solver_batch(name, t)
            solver.net.blobs["data"].data[...] = data
            solver.net.blobs["label"].data[...] = label
            solver.step(1)
            out[f"loss_{t}"] = np.array(solver.net.blobs["loss"].data)
            for layer, blobs in solver.net.params.items():
                for i, blob in enumerate(blobs):
                    out[f"{layer}_{i}_after_iter{t + 1}"] = np.array(blob.data)
        solver.snapshot()
    finally:
        os.chdir(here)
    return out
