"""DeepLab-LargeFOV written by hand in plain PyTorch: the reference the benchmarks measure
the engine against (forward here, training and extraction elsewhere).

Same layers, names and Caffe semantics as prototxt/voc12/DeepLab-LargeFOV: VGG-16 convs
(conv5_x dilation 2), pool1-3 MAX 3x3 stride 2 pad 1 and pool4-5 MAX 3x3 stride 1 pad 1 with
Caffe's ceil rounding (PyTorch's ceil_mode applies the same rule: a last window that would
start in the padding is dropped), pool5a AVE 3x3 stride 1 pad 1 dividing by the window
including padding (count_include_pad, as Caffe), fc6 3x3 dilation 12 pad 12 to 1024, fc7
1x1 to 1024, dropout 0.5 after both, fc8_voc12 1x1 to the classes. ``forward`` returns the
stride-8 scores (fc8_voc12); ``upsample`` is the test net's Interp zoom_factor 8.

    model = LargeFOV(num_classes=21)
    model.load_from_net(net)          # copy weights from a caffe.net.Net, by layer name
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (name, in, out, dilation) of the VGG-16 convs; a pool follows each block.
VGG_CONVS = [
    [("conv1_1", 3, 64, 1), ("conv1_2", 64, 64, 1)],
    [("conv2_1", 64, 128, 1), ("conv2_2", 128, 128, 1)],
    [("conv3_1", 128, 256, 1), ("conv3_2", 256, 256, 1), ("conv3_3", 256, 256, 1)],
    [("conv4_1", 256, 512, 1), ("conv4_2", 512, 512, 1), ("conv4_3", 512, 512, 1)],
    [("conv5_1", 512, 512, 2), ("conv5_2", 512, 512, 2), ("conv5_3", 512, 512, 2)],
]
POOL_STRIDES = [2, 2, 2, 1, 1]


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV (fc6 3x3 dilation 12, fc6/fc7 1024 wide) as a plain nn.Module."""

    def __init__(self, num_classes: int = 21, width: int = 1024):
        super().__init__()
        self.blocks = []
        for convs in VGG_CONVS:
            names = []
            for name, cin, cout, d in convs:
                setattr(self, name, nn.Conv2d(cin, cout, 3, padding=d, dilation=d))
                names.append(name)
            self.blocks.append(names)
        self.fc6 = nn.Conv2d(512, width, 3, padding=12, dilation=12)
        self.fc7 = nn.Conv2d(width, width, 1)
        self.fc8_voc12 = nn.Conv2d(width, num_classes, 1)
        self.drop6 = nn.Dropout(0.5)
        self.drop7 = nn.Dropout(0.5)
        nn.init.normal_(self.fc8_voc12.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc8_voc12.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BGR mean-subtracted N x 3 x H x W -> class scores N x C x h x w at stride 8."""
        for names, stride in zip(self.blocks, POOL_STRIDES):
            for name in names:
                x = F.relu(getattr(self, name)(x), inplace=True)
            x = F.max_pool2d(x, 3, stride, 1, ceil_mode=True)
        x = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)       # pool5a
        x = self.drop6(F.relu(self.fc6(x), inplace=True))
        x = self.drop7(F.relu(self.fc7(x), inplace=True))
        return self.fc8_voc12(x)

    @staticmethod
    def upsample(scores: torch.Tensor, zoom: int = 8) -> torch.Tensor:
        """The fork's Interp zoom_factor: out = in + (in - 1)(zoom - 1), corners aligned."""
        h, w = scores.shape[2:]
        size = (h + (h - 1) * (zoom - 1), w + (w - 1) * (zoom - 1))
        return F.interpolate(scores, size=size, mode="bilinear", align_corners=True)

    def conv_names(self) -> list[str]:
        """Names of every convolution, matching the prototxt's layer names."""
        return [n for names in self.blocks for n in names] + ["fc6", "fc7", "fc8_voc12"]

    def load_from_net(self, net) -> None:
        """Copy weights and biases from a caffe.net.Net with the same layer names."""
        copy_weights(self, net, self.conv_names())


@torch.no_grad()
def copy_weights(module: nn.Module, net, names: list[str]) -> None:
    """The engine's blobs (weight, optional bias) into ``module``'s layers of the same names."""
    for name in names:
        mod, blobs = getattr(module, name), net.layer(name).blobs
        if tuple(blobs[0].shape) != tuple(mod.weight.shape):
            raise ValueError(f"layer {name!r}: net has weight {tuple(blobs[0].shape)}, "
                             f"this module {tuple(mod.weight.shape)}")
        mod.weight.copy_(blobs[0])
        if mod.bias is not None:
            mod.bias.copy_(blobs[1])


@torch.no_grad()
def randomize(net, seed: int = 0) -> None:
    """He-normal weights and small biases in every layer of a caffe.net.Net, so activations
    stay in range through VGG."""
    gen = torch.Generator().manual_seed(seed)
    for layer in net.layers:
        if len(layer.blobs):
            w = layer.blobs[0]
            w.copy_(torch.randn(w.shape, generator=gen) * (2.0 / w[0].numel()) ** 0.5)
            if len(layer.blobs) > 1:
                layer.blobs[1].copy_(torch.randn(layer.blobs[1].shape, generator=gen) * 0.01)
