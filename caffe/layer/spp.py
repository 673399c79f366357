"""SPP: spatial pyramid pooling, built as Caffe builds it from Pooling layers."""
from __future__ import annotations

import math

import torch

from .base import Layer, register
from .pooling import Pooling


@register("SPP")
class SPP(Layer):
    """Level i (0 <= i < pyramid_height) pools the N x C x H x W bottom into 2^i x 2^i bins
    with kernel ceil(H / 2^i), stride = kernel, pad (kernel 2^i - H + 1) // 2 (each axis),
    using Caffe's Pooling (MAX, AVE or STOCHASTIC; as in Caffe, STOCHASTIC has no padding,
    so it works only where every level's pad is 0, and it samples in TEST nets too: the
    inner Pooling layers' LayerParameter has no phase, i.e. TRAIN). With one level the top
    is that N x C x 1 x 1 pooling; otherwise each level is flattened and the levels are
    concatenated: N x C * sum(4^i)."""

    num_axes_on_reshape = "input must have 4 axes, corresponding to (num, channels, height, width)"
    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.spp_param
        self.levels = int(p.pyramid_height)
        if self.levels < 1:
            raise self.error("pyramid_height must be at least 1")
        self.pool = int(p.pool)
        if self.pool not in (0, 1, 2):
            raise self.error(f"unknown pooling method {self.pool}")
        n, c, h, w = bottom_shapes[0]
        self._pools: dict = {}
        if h is not None and w is not None:
            self._pyramid(h, w, (n, c, h, w))
        if self.levels == 1:
            return [(n, c, 1, 1)]
        bins = sum(4 ** i for i in range(self.levels))
        return [(n, None if c is None else c * bins)]

    def _pyramid(self, h, w, shape=None):
        """The Pooling layers for a bottom of h x w (made once per size, as Caffe's Reshape does)."""
        if (h, w) not in self._pools:
            from ..proto import caffe_pb2
            layers = []
            for i in range(self.levels):
                bins = 2 ** i
                kh, kw = math.ceil(h / bins), math.ceil(w / bins)
                lp = caffe_pb2.LayerParameter(name=f"{self.name}/level{i}", type="Pooling",
                                              bottom=["x"], top=["y"])
                pp = lp.pooling_param
                pp.pool = self.pool
                pp.kernel_h, pp.kernel_w, pp.stride_h, pp.stride_w = kh, kw, kh, kw
                pp.pad_h, pp.pad_w = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
                layers.append(Pooling(lp, [shape or (None, None, h, w)], self.phase))
            self._pools[(h, w)] = layers
        return self._pools[(h, w)]

    def forward(self, x):
        pools = self._pyramid(x.shape[2], x.shape[3])
        for pool in pools:   # Caffe's inner PoolingLayers get no phase: TRAIN, so STOCHASTIC samples in TEST too
            pool.train(True)
        if self.levels == 1:
            return (pools[0](x)[0],)
        return (torch.cat([pool(x)[0].reshape(x.shape[0], -1) for pool in pools], 1),)
