"""InnerProduct (fully connected, with axis and transpose) and Embed (a lookup table)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Layer, register
from .shape_ops import canonical_axis, count


@register("InnerProduct")
class InnerProduct(Layer):
    """top = bottom flattened from ``axis`` (default 1) to K values, times W^T (+ b).

    W is N x K (K x N with ``transpose: true``), N = num_output; the top keeps the axes
    before ``axis`` and adds one axis of N."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.inner_product_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self)
        k = count(shape, self.axis)
        if k is None:
            raise self.error(f"the inner dims of {shape} from axis {self.axis} must be known")
        n = int(p.num_output)
        if n < 1:
            raise self.error("num_output must be positive")
        self.k, self.n = k, n
        self.transpose = bool(p.transpose)
        self.bias_term = bool(p.bias_term)
        self.add_blob((k, n) if self.transpose else (n, k), p.weight_filler)
        if self.bias_term:
            self.add_blob((n,), p.bias_filler)
        return [tuple(shape[:self.axis]) + (n,)]

    def forward(self, x):
        lead = x.shape[:self.axis]
        if count(x.shape, self.axis) != self.k:
            raise self.error(f"input size incompatible with inner product parameters: "
                             f"{count(x.shape, self.axis)} values per item, the weights take {self.k}")
        flat = x.reshape(-1, self.k)
        weight = self.blobs[0].t() if self.transpose else self.blobs[0]
        y = F.linear(flat, weight, self.blobs[1] if self.bias_term else None)
        return (y.reshape(tuple(lead) + (self.n,)),)


@register("Embed")
class Embed(Layer):
    """top[..., :] = W[bottom[...]] (+ b): W is input_dim x num_output; bottom values are
    integer indices in 0..input_dim-1; the top adds one axis of num_output. No gradient
    flows to the indices (Caffe refuses to backpropagate to them)."""

    exact_num_bottom_blobs = 1

    no_gradient_to = {0: "the indices"}

    def setup(self, bottom_shapes):
        p = self.param.embed_param
        self.k, self.n = int(p.input_dim), int(p.num_output)
        if self.k < 1 or self.n < 1:
            raise self.error("input_dim and num_output must be positive")
        self.bias_term = bool(p.bias_term)
        self.add_blob((self.k, self.n), p.weight_filler)
        if self.bias_term:
            self.add_blob((self.n,), p.bias_filler)
        return [tuple(bottom_shapes[0]) + (self.n,)]

    def forward(self, x):
        index = x.detach().long()
        if not torch.equal(index.to(x.dtype), x.detach()):
            raise self.error("non-integer input")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.k):
            raise self.error(f"indices must lie in 0..{self.k - 1}")
        y = F.embedding(index, self.blobs[0])
        if self.bias_term:
            y = y + self.blobs[1]
        return (y,)
