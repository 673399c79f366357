"""The layer base class and registry (BVLC's layer.hpp and layer_factory.cpp).

Like Caffe's layer registry: each layer class registers under its type string (and the
old V1 enum name, which the prototxt upgrade maps to the same string). A layer is built
from its ``LayerParameter`` and its bottoms' shapes; ``top_shapes`` is known before any
data flows (that is what ``deeplab-netinfo`` prints). ``forward`` takes bottom tensors
and returns a tuple of top tensors.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import CaffeError

Shape = tuple  # (N, C, H, W) or shorter; entries may be None where unknown

REGISTRY: dict[str, type["Layer"]] = {}


def register(*type_names: str):
    """Class decorator: register a layer class under its Caffe type name(s)."""
    def wrap(cls):
        for name in type_names:
            REGISTRY[name] = cls
        cls.type_names = type_names
        return cls
    return wrap


AUTOMATIC = "(automatic)"   # Caffe's name for a top a layer gets without asking (net.cpp AppendTop)


class Layer(nn.Module):
    """One Caffe layer. Subclasses implement ``setup`` (validate parameters, create blobs,
    return top shapes) and ``forward``. ``blobs`` holds the learnable Caffe blobs in
    Caffe's order (weight, bias).

    Each class declares its blob contract as its Caffe header does (layer.hpp's
    ExactNumBottomBlobs & co.; -1: no constraint), checked in one place, ``make_layer``:
    exact/min/max bottom and top counts, ``equal_num_bottom_top_blobs``, and
    ``auto_top_blobs`` (given fewer tops than max(min_top_blobs, exact_num_top_blobs), the
    layer gets anonymous "(automatic)" tops). One default differs from layer.hpp's:
    ``exact_num_top_blobs`` is 1, as nearly every Caffe layer declares; a layer with another
    top contract says so. ``top_count`` is the number of tops, anonymous ones included."""

    is_data = False      # tops are fed from outside the graph (Input, ImageSegData)
    is_loss = False      # first top gets loss_weight 1 unless the prototxt says otherwise
    label_tops: tuple = ()   # data layers: indices of tops that hold per-pixel class labels
    exact_num_bottom_blobs = -1
    min_bottom_blobs = -1
    max_bottom_blobs = -1
    exact_num_top_blobs = 1
    min_top_blobs = -1
    max_top_blobs = -1
    equal_num_bottom_top_blobs = False
    auto_top_blobs = False
    # What the layer's Caffe Reshape does when a bottom's number of axes differs from the one it
    # was set up for (``check_reshape``): a message string refuses it with Caffe's words
    # (BaseConvolutionLayer's "bottom num_axes may not change", Pooling's and LRN's 4 axes);
    # "setup" reads the axis parameters again for the new count (their Reshape calls
    # CanonicalAxisIndex again: Softmax, Concat, Slice, ...; only for layers without blobs);
    # None: nothing depends on it (elementwise layers) or the layer checks it itself.
    num_axes_on_reshape: str | None = None

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: str = "TEST", top_count: int | None = None):
        super().__init__()
        self.name = param.name
        self.type = param.type
        self.param = param
        self.phase = phase
        self.top_count = len(param.top) if top_count is None else int(top_count)
        self.in_place = False   # set by the Net for each call: may this call overwrite bottom 0?
        self.blobs = nn.ParameterList()
        self.train(str(phase).upper() == "TRAIN")   # Dropout & co. follow the layer's phase
        self.top_shapes = [tuple(s) for s in self.setup([tuple(s) for s in bottom_shapes])]
        self.bottom_axes = tuple(len(s) for s in bottom_shapes)   # what setup was given
        if len(self.top_shapes) != self.top_count:
            raise self.error(f"declares {len(self.top_shapes)} top shape(s) for {self.top_count} top(s)")

    def error(self, message: str) -> CaffeError:
        """A user error naming this layer."""
        return CaffeError(f"layer {self.name!r} ({self.type}): {message}")

    def setup(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return list(bottom_shapes)

    def run(self, bottoms, in_place: bool = False) -> tuple:
        """One run of the layer inside a net: Caffe's Reshape contract on the bottoms
        (``check_reshape``), then ``forward``, overwriting bottom 0 only when ``in_place``."""
        self.check_reshape([tuple(x.shape) for x in bottoms])
        self.in_place = in_place
        try:
            return self(*bottoms)
        finally:
            self.in_place = False

    def check_reshape(self, bottom_shapes) -> None:
        """Caffe's Reshape contract on the bottoms' numbers of axes, called before every run
        of the layer on bottoms of ``bottom_shapes`` (a pycaffe user may have reshaped them):
        unchanged counts pass; otherwise ``num_axes_on_reshape`` decides (see there), and a
        refusal is an error naming the layer and the bottom."""
        axes = tuple(len(s) for s in bottom_shapes)
        if axes == self.bottom_axes:
            return
        rule = self.num_axes_on_reshape
        if rule == "setup":
            built = self.top_shapes
            self.setup([tuple(s) for s in bottom_shapes])
            self.top_shapes = built
        elif rule is not None:
            names = list(getattr(self, "bottom_names", [])) or [f"bottom {i}" for i in range(len(axes))]
            changed = [f"{n!r} has shape {tuple(s)}" for n, s, a, b in zip(names, bottom_shapes, axes, self.bottom_axes)
                       if a != b]
            raise self.error(f"{rule}: set up for {'/'.join(map(str, self.bottom_axes))}-axis bottoms, but "
                             f"{', '.join(changed)}")
        self.bottom_axes = axes

    def allow_force_backward(self, bottom: int) -> bool:
        """Caffe's AllowForceBackward: may ``force_backward`` send a gradient into ``bottom``?"""
        return True

    # Bottoms whose gradient Caffe's Backward refuses (LOG(FATAL) / NOT_IMPLEMENTED when asked
    # for it): index -> what the bottom is. -1 is the last bottom; "*" every bottom.
    no_gradient_to: dict = {}

    def add_blob(self, shape: Sequence[int], filler) -> None:
        """Create a learnable blob of ``shape`` filled by a Caffe FillerParameter."""
        from .fillers import fill
        data = torch.empty(tuple(int(s) for s in shape))
        fill(data, filler, self)
        self.blobs.append(nn.Parameter(data))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, type={self.type!r}"


class LossLayer(Layer):
    """Caffe's LossLayer (loss_layer.hpp): two bottoms (scores, labels), ExactNumTopBlobs 1
    with AutoTopBlobs (a top the prototxt does not name is anonymous), loss_weight 1 on the
    first top by default, and force_backward never reaches the labels (bottom 1)."""

    is_loss = True
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1
    auto_top_blobs = True

    def allow_force_backward(self, bottom: int) -> bool:
        """Not into the labels (LossLayer::AllowForceBackward)."""
        return bottom != 1


def layer_class(param) -> type[Layer]:
    """The registered class for ``param.type``; an unknown type is a user error."""
    cls = REGISTRY.get(param.type)
    if cls is None:
        known = ", ".join(sorted(REGISTRY))
        raise CaffeError(f"layer {param.name!r}: unknown layer type {param.type!r} (supported: {known})")
    return cls


def top_count(cls: type[Layer], given: int) -> int:
    """How many tops a layer of ``cls`` has when the prototxt names ``given``: Caffe's
    AutoTopBlobs adds anonymous ones up to max(MinTopBlobs, ExactNumTopBlobs)."""
    if cls.auto_top_blobs:
        return max(given, cls.min_top_blobs, cls.exact_num_top_blobs)
    return given


def check_blob_counts(cls: type[Layer], param, bottoms: int, tops: int) -> None:
    """Caffe's Layer::CheckBlobCounts, with errors that name the layer."""
    where = f"layer {param.name!r} ({param.type})"

    def check(ok: bool, what: str, n: int, got: int, kind: str) -> None:
        if not ok:
            raise CaffeError(f"{where}: takes {what} {n} {kind} blob(s), got {got}")

    check(cls.exact_num_bottom_blobs < 0 or bottoms == cls.exact_num_bottom_blobs,
          "exactly", cls.exact_num_bottom_blobs, bottoms, "bottom")
    check(cls.min_bottom_blobs < 0 or bottoms >= cls.min_bottom_blobs, "at least", cls.min_bottom_blobs,
          bottoms, "bottom")
    check(cls.max_bottom_blobs < 0 or bottoms <= cls.max_bottom_blobs, "at most", cls.max_bottom_blobs,
          bottoms, "bottom")
    check(cls.exact_num_top_blobs < 0 or tops == cls.exact_num_top_blobs, "exactly", cls.exact_num_top_blobs,
          tops, "top")
    check(cls.min_top_blobs < 0 or tops >= cls.min_top_blobs, "at least", cls.min_top_blobs, tops, "top")
    check(cls.max_top_blobs < 0 or tops <= cls.max_top_blobs, "at most", cls.max_top_blobs, tops, "top")
    if cls.equal_num_bottom_top_blobs and bottoms != tops:
        raise CaffeError(f"{where}: takes as many tops as bottoms, got {bottoms} bottom(s) and {tops} top(s)")


def make_layer(param, bottom_shapes: Sequence[Shape], phase: str) -> Layer:
    """Build the registered layer for ``param.type`` after checking its blob contract
    (anonymous tops included); an unknown type is a user error."""
    cls = layer_class(param)
    tops = top_count(cls, len(param.top))
    check_blob_counts(cls, param, len(bottom_shapes), tops)
    return cls(param, bottom_shapes, phase, tops)


def spatial(values, single, h, w, default, what, layer):
    """Caffe's ``kernel_size`` / ``kernel_h``+``kernel_w`` convention -> (h, w)."""
    if h is not None or w is not None:
        if values:
            raise layer.error(f"{what} is {what}_size OR {what}_h and {what}_w; not both")
        if h is None or w is None:
            raise layer.error(f"for non-square {what}s both {what}_h and {what}_w are required")
        return int(h), int(w)
    values = list(values) if single is None else [single]
    if not values:
        if default is None:
            raise layer.error(f"{what} size is required")
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise layer.error(f"{what} takes 1 or 2 values for 2-D blobs, got {len(values)}")


# Import the layer families so they register themselves.
