"""Element-wise layers: ReLU (leaky with negative_slope) and Dropout."""
from __future__ import annotations

import torch.nn.functional as F

from . import Layer, register


@register("ReLU")
class ReLU(Layer):
    """max(x, 0) + negative_slope * min(x, 0). Overwrites its bottom only when the Net says
    that is safe for this call (``self.in_place``: an in-place top, no gradient recorded, and
    no other blob or caller tensor shares the memory)."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        self.slope = float(self.param.relu_param.negative_slope)
        return list(bottom_shapes)

    def forward(self, x):
        if self.slope:
            return (F.leaky_relu(x, self.slope, inplace=self.in_place),)
        return (F.relu(x, inplace=self.in_place),)


@register("Dropout")
class Dropout(Layer):
    """Caffe's dropout: in training, zero with probability ratio and scale by 1/(1-ratio).
    The SegNet forks' ``sample_weights_test`` (Bayesian SegNet's Monte Carlo dropout) drops
    and scales the same way in TEST too (their dropout_layer.cpp: ``phase_ == TRAIN ||
    sample_weights_test``); backward multiplies by the same mask and scale. ``scale_train:
    false`` (Intel's / NVIDIA's forks) moves the scaling to TEST: kept values pass unscaled in
    training and TEST multiplies by 1 - ratio."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.dropout_param
        self.ratio = float(p.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.sample_test = bool(p.sample_weights_test)
        self.scale_train = bool(p.scale_train)
        return list(bottom_shapes)

    def forward(self, x):
        sampling = self.training or self.sample_test
        y = F.dropout(x, self.ratio, sampling)
        if not self.scale_train and self.ratio:
            y = y * (1.0 - self.ratio)   # undoes F.dropout's 1/(1-ratio), or scales TEST's copy
        return (y,)
