"""The DeepLab fork's 2014 pycaffe API, beside today's (deprecated: one line per process).

The fork (deeplab-public / DeepLab-Context ``python/caffe/_caffe.cpp``, ``pycaffe.py``) has no
phase argument: Caffe's singleton holds one process-wide phase, TRAIN until set, and

* ``caffe.Net(proto)`` / ``caffe.Net(proto, weights)`` build the net in that phase (a
  prototxt's own ``state { phase: ... }`` wins, as the fork's Net::FilterNet has it);
* ``net.set_phase_train()`` / ``net.set_phase_test()`` (and ``caffe.set_phase_train`` /
  ``caffe.set_phase_test`` of the pycaffe that followed) set that phase: layers already built
  stay, while Dropout of every such net follows the phase from its next forward on;
* ``net.set_mode_cpu()`` / ``set_mode_gpu()`` / ``set_device(i)`` are the process-wide ones;
* ``net.set_mean`` (``mode='elementwise'`` resizes a K x H x W mean to the input, ``'channel'``
  takes its per-channel mean), ``set_input_scale``, ``set_raw_scale``, ``set_channel_swap``,
  ``preprocess`` and ``deprocess`` keep per-input settings in ``net.mean`` & co.;
* ``Classifier`` / ``Detector`` take ``gpu=`` (also as the fork's positional argument).

Nets built with a phase (``caffe.Net(proto, caffe.TEST)``) do not follow the global phase.
"""
from __future__ import annotations

import os

import numpy as np

from .. import TEST, TRAIN

_PHASE = {"phase": TRAIN}   # Caffe::phase_, TRAIN in the fork's Caffe constructor

DEPRECATION = ("the 2014 pycaffe API (Net(proto[, weights]) without a phase, set_phase_*, net.set_mode_*, "
               "net.set_mean & co., gpu=) is deprecated: use caffe.Net(proto, caffe.TEST, weights=...), "
               "caffe.set_mode_cpu()/set_mode_gpu() and caffe.io.Transformer")


def deprecated() -> None:
    """Print the 2014 API's deprecation line (once per process)."""
    from ..util.notices import warn_once
    warn_once("pycaffe-2014", DEPRECATION)


def phase() -> int:
    """The process-wide phase of the 2014 API (caffe.TRAIN until set)."""
    return _PHASE["phase"]


def set_phase_train() -> None:
    """Caffe::set_phase(TRAIN) for nets built and run without a phase."""
    deprecated()
    _PHASE["phase"] = TRAIN


def set_phase_test() -> None:
    """Caffe::set_phase(TEST) for nets built and run without a phase."""
    deprecated()
    _PHASE["phase"] = TEST


def build_phase(network_file) -> tuple:
    """The parsed net and the phase the fork builds it in: its ``state.phase`` if the file
    sets one, else the process-wide phase."""
    from ..prototxt import parse_net
    param = parse_net(network_file)
    if param.HasField("state") and param.state.HasField("phase"):
        return param, int(param.state.phase)
    return param, phase()


def is_path(value) -> bool:
    """A weights argument (a path) rather than a phase."""
    return isinstance(value, (str, bytes, os.PathLike))


class LegacyNet:
    """The fork's Net methods, mixed into caffe.Net."""

    _follows_phase = False

    # -------------------------------------------------------------- phase and mode
    def set_phase_train(self) -> None:
        """The fork's net.set_phase_train(): the process-wide phase becomes TRAIN."""
        set_phase_train()

    def set_phase_test(self) -> None:
        """The fork's net.set_phase_test(): the process-wide phase becomes TEST."""
        set_phase_test()

    def set_mode_cpu(self) -> None:
        """The fork's net.set_mode_cpu(): caffe.set_mode_cpu()."""
        from ..common import set_mode_cpu
        deprecated()
        set_mode_cpu()

    def set_mode_gpu(self) -> None:
        """The fork's net.set_mode_gpu(): caffe.set_mode_gpu()."""
        from ..common import set_mode_gpu
        deprecated()
        set_mode_gpu()

    def set_device(self, device_id: int) -> None:
        """The fork's net.set_device(i): caffe.set_device(i)."""
        from ..common import set_device
        deprecated()
        set_device(device_id)

    def _follow_phase(self) -> None:
        """A net built without a phase runs Dropout & co. in the current process-wide phase."""
        if self._follows_phase:
            self._net.train(phase() == TRAIN)

    # -------------------------------------------------------------- preprocessing
    def _settings(self) -> dict:
        if "_legacy_io" not in self.__dict__:
            self.__dict__["_legacy_io"] = {"mean": {}, "input_scale": {}, "raw_scale": {}, "channel_swap": {}}
        return self.__dict__["_legacy_io"]

    mean = property(lambda self: self._settings()["mean"], doc="Means by input name (the fork's net.mean).")
    input_scale = property(lambda self: self._settings()["input_scale"], doc="Input scales by input name.")
    raw_scale = property(lambda self: self._settings()["raw_scale"], doc="Raw scales by input name.")
    channel_swap = property(lambda self: self._settings()["channel_swap"], doc="Channel orders by input name.")

    def _check_input(self, input_) -> None:
        if input_ not in self.inputs:
            raise Exception(f"Input not in {self.inputs}")

    def set_mean(self, input_, mean, mode: str = "elementwise") -> None:
        """Subtract ``mean`` (K x H x W) from ``input_``: ``elementwise`` (resized to the input
        when its size differs) or ``channel`` (its per-channel mean), as the fork's."""
        from ..io import resize_image
        deprecated()
        self._check_input(input_)
        mean = np.asarray(mean, dtype=np.float32)
        in_shape = self.blobs[input_].data.shape
        if mode == "elementwise":
            if mean.shape[1:] != in_shape[2:]:
                mean = resize_image(mean.transpose((1, 2, 0)), in_shape[2:]).transpose((2, 0, 1))
            self.mean[input_] = mean
        elif mode == "channel":
            self.mean[input_] = mean.mean(1).mean(1).reshape((in_shape[1], 1, 1))
        else:
            raise Exception(f"Mode not in {['elementwise', 'channel']}")

    def set_input_scale(self, input_, scale) -> None:
        """Multiply the preprocessed input by ``scale`` (after the mean)."""
        deprecated()
        self._check_input(input_)
        self.input_scale[input_] = scale

    def set_raw_scale(self, input_, scale) -> None:
        """Multiply the raw input by ``scale`` (before the mean; 255 for [0, 1] images)."""
        deprecated()
        self._check_input(input_)
        self.raw_scale[input_] = scale

    def set_channel_swap(self, input_, order) -> None:
        """Reorder the input's channels (e.g. (2, 1, 0): RGB to BGR)."""
        deprecated()
        self._check_input(input_)
        self.channel_swap[input_] = order

    def preprocess(self, input_name, input_) -> np.ndarray:
        """H' x W' x K image -> K x H x W input: float32, resize, channel swap, transpose,
        x raw_scale, - mean, x input_scale (the fork's order)."""
        from ..io import resize_image
        caffe_in = np.asarray(input_, dtype=np.float32)
        in_size = self.blobs[input_name].data.shape[2:]
        if caffe_in.shape[:2] != in_size:
            caffe_in = resize_image(caffe_in, in_size)
        order = self.channel_swap.get(input_name)
        if order is not None:
            caffe_in = caffe_in[:, :, order]
        caffe_in = caffe_in.transpose((2, 0, 1)).copy()
        for key, op in (("raw_scale", np.multiply), ("mean", np.subtract), ("input_scale", np.multiply)):
            value = self._settings()[key].get(input_name)
            if value is not None:
                caffe_in = op(caffe_in, value).astype(np.float32)
        return caffe_in

    def deprocess(self, input_name, input_) -> np.ndarray:
        """Undo preprocess (without the resize): K x H x W -> H x W x K."""
        decaf_in = np.array(input_, dtype=np.float32).squeeze()
        for key, op in (("input_scale", np.divide), ("mean", np.add), ("raw_scale", np.divide)):
            value = self._settings()[key].get(input_name)
            if value is not None:
                decaf_in = op(decaf_in, value).astype(np.float32)
        decaf_in = decaf_in.transpose((1, 2, 0))
        order = self.channel_swap.get(input_name)
        if order is not None:
            decaf_in = decaf_in[:, :, [list(order).index(i) for i in range(decaf_in.shape[2])]]
        return decaf_in


def split_args(args: tuple, kwargs: dict, names_2014: tuple, names_now: tuple, what: str) -> tuple[dict, bool]:
    """Classifier/Detector arguments after the weights: the fork's order (with ``gpu`` first,
    a bool) or today's. Returns ({name: value}, whether the 2014 form was used)."""
    legacy = "gpu" in kwargs or (bool(args) and isinstance(args[0], (bool, np.bool_)))
    names = names_2014 if legacy else names_now
    if len(args) > len(names):
        raise TypeError(f"{what} takes at most {len(names)} arguments after the weights, got {len(args)}")
    values = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names_2014:
            raise TypeError(f"{what} got an unexpected keyword argument {key!r}")
        if key in values:
            raise TypeError(f"{what} got multiple values for argument {key!r}")
        values[key] = value
    return values, legacy


def fork_setup(net, gpu, mean) -> np.ndarray | None:
    """What the fork's Classifier/Detector did first: the process-wide phase TEST, the mode
    from ``gpu``; returns the mean as the fork's net.set_mean (elementwise, resized)."""
    from ..io import resize_image
    from ..common import set_mode_cpu, set_mode_gpu
    deprecated()
    set_phase_test()
    set_mode_gpu() if gpu else set_mode_cpu()
    if mean is None:
        return None
    mean = np.asarray(mean, dtype=np.float32)
    in_shape = net.blobs[net.inputs[0]].data.shape
    if mean.ndim == 3 and mean.shape[1:] != in_shape[2:]:
        mean = resize_image(mean.transpose((1, 2, 0)), in_shape[2:]).transpose((2, 0, 1))
    return mean
