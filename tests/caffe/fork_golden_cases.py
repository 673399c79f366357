"""DeepLab fork golden cases: one small V1-syntax net per configuration of the fork's layers.

Like tests/caffe/golden_cases.py (BVLC's), this module imports neither torch nor any ``caffe``:
:func:`run_fork_case` drives a net through a small adapter (:class:`NetDriver`), so the same
code produced the fixtures under the fork's own build (``tools/make_fork_golden.py``, through
its ``_caffe`` module) and replays them on this project's ``caffe``
(``tests/caffe/test_fork_golden.py``). Nets are in the fork's 2014 syntax: ``input:`` blobs, ``layers``
with V1 type enums. A bottom listed in ``learn`` reaches the layer through a 1x1 CONVOLUTION
with identity weights and ``blobs_lr``, so it gets a diff without ``force_backward`` (which the
fork would also send into label bottoms, where its layers abort); the layer's top then carries
``loss_weight: 1`` so that the fork runs its Backward at all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from golden_cases import case_seed, make_input, write_net

DATA_DIR = "data"
LABEL_MAP = "label_map.txt"
LABEL_MAP_TEXT = "0 1\n2\n3 4 1\n4 4\n"


@dataclass
class ForkCase:
    """One layer under test: its V1 text without name/bottom/top, its bottoms, how to run it."""
    name: str
    body: str                         # e.g. 'type: BIAS_CHANNEL bias_channel_param { ... }'
    bottoms: dict                     # blob name -> (kind, shape, *args) for golden_cases.make_input
    backward: bool = False            # run Backward with random top diffs
    force_backward: bool = False
    learn: tuple = ()                 # bottoms fed through an identity 1x1 convolution (see above)
    params: dict = field(default_factory=dict)   # blob index -> values set before forward
    files: bool = False               # the net reads DATA_DIR (the cwd while it runs)


class NetDriver(Protocol):
    """What :func:`run_fork_case` needs from a Caffe: ``open(path)`` builds the net (TEST phase);
    ``data/diff(blob)`` are writable float32 arrays; ``param_data/param_diff(layer, i)`` likewise
    for a layer's learnable blobs; ``forward()``; ``backward()`` uses the top diffs as set."""

    def open(self, path: str) -> None: ...
    def data(self, blob: str) -> np.ndarray: ...
    def diff(self, blob: str) -> np.ndarray: ...
    def param_data(self, layer: str, i: int) -> np.ndarray: ...
    def param_diff(self, layer: str, i: int) -> np.ndarray: ...
    def num_params(self, layer: str) -> int: ...
    def forward(self) -> None: ...
    def backward(self) -> None: ...


def net_text(case: ForkCase) -> str:
    """The case's net in the fork's syntax."""
    lines = [f'name: "{case.name}"', f"force_backward: {'true' if case.force_backward else 'false'}"]
    for blob, spec in case.bottoms.items():
        name = f"{blob}_raw" if blob in case.learn else blob
        lines.append(f'input: "{name}" ' + " ".join(f"input_dim: {d}" for d in spec[1]))
    for blob in case.learn:
        channels = case.bottoms[blob][1][1]
        lines.append(f'layers {{ name: "pre_{blob}" type: CONVOLUTION bottom: "{blob}_raw" top: "{blob}" '
                     f'blobs_lr: 1 blobs_lr: 1 convolution_param {{ num_output: {channels} kernel_size: 1 }} }}')
    bottoms = " ".join(f'bottom: "{b}"' for b in case.bottoms)
    weight = " loss_weight: 1" if case.learn else ""
    lines.append(f'layers {{ name: "L" {bottoms} top: "t0"{weight} {case.body} }}')
    return "\n".join(lines) + "\n"


def write_files(folder: str) -> None:
    """The files the cases read: ChannelAggregator's label map."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LABEL_MAP), "w") as f:
        f.write(LABEL_MAP_TEXT)


def run_fork_case(driver: NetDriver, case: ForkCase, workdir: str) -> dict:
    """Run ``case`` through ``driver``; every array a golden file holds."""
    rng = np.random.default_rng(case_seed(case.name))
    text = net_text(case)
    out = {"prototxt": np.array(text)}
    path = write_net(case.name, text)
    here = os.getcwd()
    os.chdir(os.path.join(workdir, DATA_DIR) if case.files else workdir)
    try:
        driver.open(path)
        for blob, spec in case.bottoms.items():
            x = make_input(spec, rng)
            driver.data(f"{blob}_raw" if blob in case.learn else blob)[...] = x
            out[f"input/{blob}"] = x
        for blob in case.learn:
            weight = driver.param_data(f"pre_{blob}", 0)
            weight[...] = np.eye(weight.shape[0], dtype=np.float32).reshape(weight.shape)
            driver.param_data(f"pre_{blob}", 1)[...] = 0
        for i, values in case.params.items():
            target = driver.param_data("L", i)
            target[...] = np.asarray(values, np.float32).reshape(target.shape)
        for i in range(driver.num_params("L")):
            out[f"param/{i}"] = np.array(driver.param_data("L", i))
        driver.forward()
        out["top/t0"] = np.array(driver.data("t0"))
        if case.backward:
            d = rng.normal(0, 1, out["top/t0"].shape).astype(np.float32)
            driver.diff("t0")[...] = d
            out["topdiff/t0"] = d
            driver.backward()
            for blob in case.bottoms:
                if case.force_backward or blob in case.learn:
                    out[f"diff/{blob}"] = np.array(driver.diff(blob))
            for i in range(driver.num_params("L")):
                out[f"paramdiff/{i}"] = np.array(driver.param_diff("L", i))
        for i in range(driver.num_params("L")):
            out[f"paramafter/{i}"] = np.array(driver.param_data("L", i))
    finally:
        os.chdir(here)
    return out


def _onehot_input() -> list:
    """OneHot's labels (2 x 4 x 3 x 4): 0..3 for the first image, -1..3 for the second (a -1 in
    the first image makes the fork write before its top's memory)."""
    rng = np.random.default_rng(11)
    x = rng.integers(0, 4, (2, 4, 3, 4))
    x[1] = rng.integers(-1, 4, (4, 3, 4))
    return x.astype(np.float32).ravel().tolist()


def _cases() -> list:
    C = ForkCase
    scores = ("normal", (2, 4, 3, 5))
    return [
        C("bias_channel_image", "type: BIAS_CHANNEL bias_channel_param { bg_bias: 0.5 fg_bias: 1.5 }",
          {"x": scores, "labels": ("values", (2, 3, 1, 1), [0, 2, -1, 3, 1, 1])}, backward=True, learn=("x",)),
        C("bias_channel_ignore", "type: BIAS_CHANNEL bias_channel_param { ignore_label: 2 }",
          {"x": scores, "labels": ("values", (2, 3, 1, 1), [0, 2, 3, 2, -1, -1])}, backward=True, learn=("x",)),
        C("bias_channel_pixel", "type: BIAS_CHANNEL bias_channel_param { bg_bias: 0.25 fg_bias: 3 "
          "label_type: PIXEL ignore_label: 3 }",
          {"x": scores, "labels": ("ints", (2, 1, 3, 5), 0, 4)}, backward=True, learn=("x",)),
        C("adaptive_bias_channel", "type: ADAPTIVE_BIAS_CHANNEL",
          {"x": ("normal", (2, 3, 4, 5)), "labels": ("values", (2, 3, 1, 1), [0, 2, -1, 1, -1, -1])},
          backward=True, force_backward=True),
        C("adaptive_bias_channel_options", "type: ADAPTIVE_BIAS_CHANNEL adaptive_bias_channel_param { "
          "num_iter: 2 bg_portion: 0.5 fg_portion: 0.3 suppress_others: false }",
          {"x": ("normal", (2, 3, 4, 5)), "labels": ("values", (2, 2, 1, 1), [0, 1, 0, -1])}),
        C("adaptive_bias_channel_no_bg", "type: ADAPTIVE_BIAS_CHANNEL adaptive_bias_channel_param { "
          "margin_others: 0.25 fg_portion: 0.6 }",
          {"x": ("normal", (2, 4, 3, 4)), "labels": ("values", (2, 2, 1, 1), [2, -1, 1, 1])}),
        C("unique_label", "type: UNIQUE_LABEL unique_label_param { max_labels: 5 ignore_label: 4 force_label: 0 }",
          {"x": ("ints", (2, 1, 3, 4), 1, 5)}),
        C("censor_label", "type: CENSOR_LABEL censor_label_param { ignore_label: 255 }",
          {"x": ("ints", (2, 1, 3, 4), 0, 6), "labels": ("values", (2, 3, 1, 1), [1, 3, -1, 0, 4, 5])},
          backward=True, force_backward=True),
        C("channel_aggregator", f'type: CHANNEL_AGGREGATOR channel_aggregator_param {{ label_map_file: "{LABEL_MAP}" }}',
          {"x": ("normal", (2, 5, 3, 4))}, backward=True, force_backward=True, files=True),
        C("dominant_channel", "type: DOMINANT_CHANNEL dominant_channel_param { top_k: 2 }",
          {"x": ("distinct", (2, 5, 3, 4))}, backward=True, force_backward=True),
        C("dominant_channel_top1", "type: DOMINANT_CHANNEL", {"x": ("distinct", (2, 3, 4, 4))}),
        C("gain_channel", "type: GAIN_CHANNEL gain_channel_param { num_output_nz: 2 "
          'gain_filler { type: "constant" value: 1 } }',
          {"x": ("normal", (2, 3, 3, 4))}, backward=True, force_backward=True, params={0: [0.5, 1e-4, 2.0]}),
        C("gain_channel_drift", "type: GAIN_CHANNEL gain_channel_param { num_output_nz: 2 drift: 0.1 "
          'norm_mean: false thresh: 0.01 gain_filler { type: "constant" value: 1 } }',
          {"x": ("normal", (2, 3, 3, 4))}, backward=True, force_backward=True, params={0: [0.3, 0.005, 1.7]}),
        C("histogram", "type: HISTOGRAM histogram_param { num_labels: 5 ignore_label: 5 }",
          {"x": ("ints", (2, 1, 3, 4), 0, 6)}, backward=True, force_backward=True),
        C("ignore_overlay", "type: IGNORE_OVERLAY ignore_overlay_param { ignore_label: 2 }",
          {"mask": ("ints", (2, 1, 3, 4), 0, 3), "labels": ("ints", (2, 1, 3, 4), 0, 5)},
          backward=True, force_backward=True),
        C("ignore_overlay_default", "type: IGNORE_OVERLAY",
          {"mask": ("uniform", (2, 2, 3, 4), -0.9, 2.5), "labels": ("ints", (2, 2, 3, 4), 0, 5)}),
        C("onehot", "type: ONEHOT onehot_param { num_labels: 4 }", {"x": ("values", (2, 4, 3, 4), _onehot_input())}),
        C("relative_error", "type: RELATIVE_ERROR", {"a": ("normal", (2, 3, 4, 5)), "b": ("normal", (2, 3, 4, 5))}),
        C("relative_error_zero", "type: RELATIVE_ERROR",
          {"a": ("normal", (1, 2, 3, 2)), "b": ("values", (1, 2, 3, 2), [0.0] * 12)}),
    ]


FORK_CASES = _cases()
# The V1 type enum of each case, and the fork's types the cases cover.
FORK_TYPES = {"BIAS_CHANNEL", "ADAPTIVE_BIAS_CHANNEL", "UNIQUE_LABEL", "CENSOR_LABEL", "CHANNEL_AGGREGATOR",
              "DOMINANT_CHANNEL", "GAIN_CHANNEL", "HISTOGRAM", "IGNORE_OVERLAY", "ONEHOT", "RELATIVE_ERROR"}
