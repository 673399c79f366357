"""Element-wise layers: ReLU (leaky with negative_slope) and Dropout."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import Layer, register


@register("ReLU")
class ReLU(Layer):
    """max(x, 0) + negative_slope * min(x, 0); computed in place when the prototxt says so
    and no gradient is being recorded."""

    num_bottoms = (1,)

    def setup(self, bottom_shapes):
        self.slope = float(self.param.relu_param.negative_slope)
        self.in_place = self.param.top[0] == self.param.bottom[0]
        return list(bottom_shapes)

    def forward(self, x):
        inplace = self.in_place and not torch.is_grad_enabled()
        if self.slope:
            return (F.leaky_relu(x, self.slope, inplace=inplace),)
        return (F.relu(x, inplace=inplace),)


@register("Dropout")
class Dropout(Layer):
    """Caffe's dropout: in training, zero with probability ratio and scale by 1/(1-ratio)."""

    num_bottoms = (1,)

    def setup(self, bottom_shapes):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        return list(bottom_shapes)

    def forward(self, x):
        return (F.dropout(x, self.ratio, self.training),)
