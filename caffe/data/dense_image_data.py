"""DenseImageData's source: SegNet's image + label-image lists (caffe-segnet
dense_image_data_layer.cpp; label_divide_factor from caffe-enet).

``dense_image_data_param.source`` lists ``image label`` lines (caffe.util.lists; paths relative to
``root_folder``). Per item, as the fork's InternalThreadEntry: the image is read as
ReadImageToCVMat (BGR, or grey with ``is_color: false``) and resized bilinearly to
new_height x new_width when both are set; the label is read at new_height /
label_divide_factor x new_width / label_divide_factor (integer division), resized with
nearest neighbours. With ``mirror`` both are flipped left-right with probability 1/2; with
crop_height and crop_width both are cut at one offset drawn uniformly (rand() % (H - h + 1),
in every phase). The image then gets transform_param's mean (mean_file or mean_value) and
scale; the label keeps its values. ``shuffle`` shuffles the lines at the start and at each
wrap-around; ``rand_skip`` skips rand() % rand_skip lines once.

Refused where the fork stops or misbehaves: transform_param crop_size or mirror (caffe-segnet:
"FIXME: Any stochastic transformation will break layer", as image and label would be drawn
apart), label_divide_factor other than 1 without new_height/new_width or with a crop (the
label would not match the top), a crop larger than the image, and with batch_size > 1 (or a
resize or crop) an image whose size differs from the first one's. Two choices differ from
the fork on purpose: labels are read by caffe.util.images.read_label (palette or grey PNG as class
indices; the fork's greyscale imread turns a palette into luminance and an RGB label into
grey, read_label refuses RGB), and dense_image_data_param.mean_file, which the fork never
reads, is ignored as there.
"""
from __future__ import annotations

import os

import numpy as np

from .. import CaffeError
from .base import CaffeTransform, _Source, _batch_size, _rng
from ..util.lists import ListOrder


class DenseImageDataSource(_Source):
    """A Dataset by stream position of (image C x H x W, label 1 x H' x W', where)."""

    def __init__(self, lp, phase: str = "TRAIN", seed: int = 0):
        super().__init__(lp, phase, seed)
        p = lp.dense_image_data_param
        self.batch_size = _batch_size(p.batch_size, self.where, "dense_image_data_param")
        self.new_size = (int(p.new_height), int(p.new_width))
        self.crop = (int(p.crop_height), int(p.crop_width))
        self.factor = int(p.label_divide_factor)
        if bool(self.new_size[0]) != bool(self.new_size[1]):
            raise CaffeError(f"{self.where}: new_height and new_width must be set at the same time")
        if bool(self.crop[0]) != bool(self.crop[1]):
            raise CaffeError(f"{self.where}: crop_height and crop_width must be set at the same time")
        if self.factor < 1:
            raise CaffeError(f"{self.where}: label_divide_factor must be at least 1, got {self.factor}")
        if self.factor != 1 and (not self.new_size[0] or self.crop[0]):
            raise CaffeError(f"{self.where}: label_divide_factor {self.factor} needs new_height and new_width "
                             "and no crop_height/crop_width (the label is read at the new size divided by it)")
        tp = lp.transform_param
        if tp.crop_size or tp.mirror:
            raise CaffeError(f"{self.where}: transform_param crop_size and mirror would crop/mirror image and "
                             "label apart; use dense_image_data_param crop_height/crop_width and mirror")
        if not p.source:
            raise CaffeError(f"{self.where}: dense_image_data_param.source (the list file) is not set")
        self.transform = CaffeTransform(tp, self.train, self.where)
        self.color, self.mirror = bool(p.is_color), bool(p.mirror)
        lines = self.read_lines(p.source)
        self.entries = []
        for line in lines:
            if line.label is None:
                raise CaffeError(f"{self.where}: {line.where}: expected 'image label_image', got one column")
            paths = (p.root_folder + line.image, p.root_folder + line.label)
            for path in paths:
                if not os.path.isfile(path):
                    raise CaffeError(f"{self.where}: {line.where}: {path} does not exist")
            self.entries.append((line.where,) + paths)
        self.item_index = ListOrder(len(self.entries), p.shuffle, self.seed, p.rand_skip, self.where)
        # batch_size 1 without resize or crop: every batch takes its image's size (the fork reshapes)
        self.varying = self.batch_size == 1 and not self.new_size[0] and not self.crop[0]
        self.first = self._read(self.item_index(0))[0].shape

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, index: int):
        import cv2
        from ..util.images import read_image, read_label
        where, image_path, label_path = self.entries[index]
        try:
            img = read_image(image_path, color=self.color)
            lab = read_label(label_path)
        except CaffeError as e:
            raise CaffeError(f"{self.where}: {where}: {e}") from None
        nh, nw = self.new_size
        if nh and nw:
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR).reshape(nh, nw, -1)
            lh, lw = nh // self.factor, nw // self.factor
            if lh and lw:
                lab = cv2.resize(lab, (lw, lh), interpolation=cv2.INTER_NEAREST)
        if lab.shape != tuple(s // self.factor for s in img.shape[:2]):
            raise CaffeError(f"{self.where}: {where}: input and label image heights and widths must match "
                             f"(image {img.shape[0]}x{img.shape[1]}, label {lab.shape[0]}x{lab.shape[1]})")
        return img.transpose(2, 0, 1), lab[None]

    def top_shapes(self) -> list[tuple]:
        """data N x C x H x W, label N x 1 x H/f x W/f (unknown H x W for varying sizes)."""
        c, h, w = self.first
        if self.crop[0]:
            h, w = self.crop
        elif self.varying:
            h = w = None
        f = self.factor
        return [(self.batch_size, c, h, w),
                (self.batch_size, 1, None if h is None else h // f, None if w is None else w // f)]

    def item(self, pos: int):
        index = self.item_index(pos)
        img, lab = self._read(index)
        if not self.varying and img.shape != self.first:
            raise CaffeError(f"{self.where}: {self.entries[index][0]}: image is {img.shape[1]}x{img.shape[2]}, the "
                             f"first one {self.first[1]}x{self.first[2]} (set new_height/new_width, a crop, or "
                             "batch_size 1)")
        rng = _rng(self.seed, pos)
        if self.mirror and rng.integers(2):
            img, lab = img[:, :, ::-1], lab[:, :, ::-1]
        if self.crop[0]:
            ch, cw = self.crop
            h, w = img.shape[1:]
            if ch > h or cw > w:
                raise CaffeError(f"{self.where}: {self.entries[index][0]}: crop {ch}x{cw} is larger than the "
                                 f"image {h}x{w}")
            y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            img, lab = img[:, y:y + ch, x:x + cw], lab[:, y:y + ch, x:x + cw]
        data = self.transform(np.ascontiguousarray(img), rng)
        return data, np.ascontiguousarray(lab, dtype=np.float32), self.entries[index][0]
