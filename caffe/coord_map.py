"""Coordinate maps between NetSpec tops (pycaffe's ``caffe.coord_map``), for cropping.

A layer maps input coordinates to output coordinates along its spatial axes as
``(axis, a, b)``: output ``y`` sits at input ``x = a * y + b`` inverted, i.e. the map is
``x -> a * x + b`` forward. Convolution and Pooling: ``a = 1/stride``, ``b = (pad - (k_eff - 1)
/ 2) / stride`` with ``k_eff = (k - 1) * dilation + 1``; Deconvolution: ``a = stride``,
``b = (k_eff - 1) / 2 - pad``; element-wise layers: identity on any axis; Crop: ``b = -offset``
from its axis. :func:`crop` builds the Crop layer that aligns one top with another, as FCN's
``net.py`` does.
"""
from __future__ import annotations

import numpy as np

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN",
                       "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH",
                       "Threshold"]
IDENTITY = (None, 1, 0)


class UndefinedMapException(Exception):
    """The layer has no coordinate map (e.g. InnerProduct)."""


class AxisMismatchException(Exception):
    """Two maps act on different axes."""


def _vec(value) -> np.ndarray:
    return np.array(value, ndmin=1)


def conv_params(fn):
    """(axis, stride, effective kernel, pad) of a Convolution / Deconvolution / Pooling / Im2col."""
    p = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(fn.params)
    assert not legacy, "cropping does not support legacy _h/_w params"
    kernel = _vec(p["kernel_size"])
    return (p.get("axis", 1), _vec(p.get("stride", 1)), (kernel - 1) * _vec(p.get("dilation", 1)) + 1,
            _vec(p.get("pad", 0)))


def crop_params(fn):
    """(axis, offset) of a Crop layer, with Caffe's defaults (axis 2, offset 0)."""
    p = fn.params.get("crop_param", fn.params)
    return p.get("axis", 2), _vec(p.get("offset", 0))


def coord_map(fn):
    """The (axis, scale, shift) map of one layer function."""
    kind = fn.type_name
    if kind in ("Convolution", "Pooling", "Im2col"):
        axis, stride, kernel, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (kernel - 1) / 2) / stride
    if kind == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2 - pad
    if kind in PASS_THROUGH_LAYERS:
        return IDENTITY
    if kind == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # the axis before the first cropped one, as conv's "axis"
    raise UndefinedMapException(kind)


def compose(first, then):
    """The map ``first`` followed by ``then``: scales multiply, ``then``'s shift is scaled by ``first``'s."""
    ax1, a1, b1 = first
    ax2, a2, b2 = then
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException(f"axis {ax1} vs {ax2}")
    return (ax2 if ax1 is None else ax1), a1 * a2, a1 * b2 + b1


def inverse(m):
    """The map back: ``x -> (x - b) / a``."""
    ax, a, b = m
    return ax, 1 / a, -b / a


def _bottoms(top):
    """The inputs to walk through: all of a layer's, but only the cropped one of a Crop."""
    inputs = top.fn.inputs
    return inputs[:1] if top.fn.type_name == "Crop" else inputs


def _upstream(start):
    """Yield ``(top, map start <- top)`` for ``start`` and every top reachable upstream of it."""
    maps, todo = {start: IDENTITY}, [start]
    while todo:
        top = todo.pop()
        yield top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _bottoms(top):
            maps[bottom] = compose(maps[top], step)
            todo.append(bottom)


def coord_map_from_to(top_from, top_to):
    """The map from ``top_from``'s coordinates to ``top_to``'s, through a common ancestor."""
    from_maps = dict(_upstream(top_from))
    for top, to_map in _upstream(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from, top_to):
    """A Crop layer cutting ``top_from`` to ``top_to``'s extent at the offset their maps imply."""
    from .net_spec import layers as L
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a), np.asarray(b)
    assert (a == 1).all(), f"scale mismatch on crop (a = {a})"
    assert (b <= 0).all(), f"cannot crop negative offset (b = {b})"
    assert (np.round(b) == b).all(), f"cannot crop noninteger offset (b = {b})"
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=[int(v) for v in -np.round(b).astype(int)]))
