"""ImageSegData loading: the DeepLab fork's image + label source, fed to a Net.

A list file holds ``/JPEGImages/x.jpg /SegmentationClassAug/x.png`` lines (one column when
the layer has no labels) relative to ``root_folder``; paths in the prototxt are relative to
the working directory, as in Caffe. Images are read with OpenCV as BGR 0-255; labels as
class indices (caffe.util.images.read_label). The fork's TransformImgAndSeg: pad image with the
mean and label with ignore_label at the bottom/right up to crop_size, then crop (random in
TRAIN, centred in TEST), mirror with probability 1/2 when ``mirror``, subtract the mean,
times ``scale``.

Sample order and augmentation are a function of (seed, position): position p of the stream
is item p mod N of epoch p div N (shuffled per epoch from (seed, epoch) when ``shuffle``),
and its crop/mirror draw from (seed, p). Batch b of process r (of w) holds positions
(b*w + r)*B ... (b*w + r + 1)*B - 1, so w processes with batch B see exactly the samples of
one process with batch w*B, and a resumed run picks up at the right place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
from torch.utils.data import Dataset

from .. import CaffeError
from ..util.images import read_image, read_label
from ..util.lists import ListOrder, read_list as read_lines

NONE, IMAGE, PIXEL = 0, 1, 2


@dataclass
class Entry:
    """One list line: where it is, the image path, and the label (path or class id)."""

    where: str  # "list.txt:12"
    image: str
    label: str | None


def read_list(source: str, root_folder: str = "", label_type: int = PIXEL) -> list[Entry]:
    """Parse a list file (caffe.util.lists); every listed file must exist (an error names the list line)."""
    entries = []
    for line in read_lines(source):
        if label_type != NONE and line.label is None:
            raise CaffeError(f"{line.where}: expected an image and a label, got {line.text!r}")
        image = root_folder + line.image
        label = None
        if label_type == PIXEL:
            label = root_folder + line.label
        elif label_type == IMAGE:
            label = line.label
            if not label.lstrip("-").isdigit():
                raise CaffeError(f"{line.where}: label_type IMAGE needs an integer class, got {label!r}")
        for path in (image, label if label_type == PIXEL else None):
            if path is not None and not os.path.isfile(path):
                raise CaffeError(f"{line.where}: {path} does not exist")
        entries.append(Entry(line.where, image, label))
    return entries


@dataclass
class Transform:
    """The fork's transform_param for image + label, and image_data_param's reading."""

    crop: int = 0
    mirror: bool = False
    mean: tuple = ()
    scale: float = 1.0
    train: bool = True
    ignore_label: int = 255
    new_size: tuple = (0, 0)   # (height, width), 0 = keep
    color: bool = True
    num_classes: int | None = None   # with it, every label value must be a class or label_ignore
    label_ignore: int | None = None

    def __call__(self, img: np.ndarray, lab: np.ndarray, rng: np.random.Generator):
        """HxWxC uint8 image, HxW uint8 label -> (CxHxW float32, 1xHxW float32, (h, w))."""
        h, w = img.shape[:2]
        c = img.shape[2]
        mean = np.zeros(c, np.float32)
        if self.mean:
            mean = np.array(self.mean * c if len(self.mean) == 1 else self.mean, np.float32)
        img = img.astype(np.float32)
        do_mirror = self.mirror and bool(rng.integers(2))
        if self.crop:
            ph, pw = max(self.crop - h, 0), max(self.crop - w, 0)
            if ph or pw:  # pad bottom/right: image with the mean, label with ignore_label
                img = np.concatenate([img, np.broadcast_to(mean, (ph, w, c))], 0) if ph else img
                img = np.concatenate([img, np.broadcast_to(mean, (h + ph, pw, c))], 1) if pw else img
                lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=self.ignore_label)
            H, W = img.shape[:2]
            if self.train:
                y, x = int(rng.integers(H - self.crop + 1)), int(rng.integers(W - self.crop + 1))
            else:
                y, x = (H - self.crop) // 2, (W - self.crop) // 2
            img = img[y:y + self.crop, x:x + self.crop]
            lab = lab[y:y + self.crop, x:x + self.crop]
        if do_mirror:
            img, lab = img[:, ::-1], lab[:, ::-1]
        img = img - mean
        if self.scale != 1.0:
            img = img * np.float32(self.scale)
        dims = (min(h, self.crop) if self.crop else h, min(w, self.crop) if self.crop else w)
        data = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
        return data, np.ascontiguousarray(lab, dtype=np.float32)[None], dims

    def read(self, entry: Entry, label_type: int) -> tuple[np.ndarray, np.ndarray]:
        """Read one list entry: BGR (or grey) uint8 image and its label (uint8, or uint16 for
        16-bit files) of the same size; with ``num_classes`` every label value is checked, so a
        bad label is an error naming the list line and the file even where the crop misses it."""
        try:
            img = read_image(entry.image, color=self.color)   # the one image rule (truncated files refused)
        except CaffeError as e:
            raise CaffeError(f"{entry.where}: {e}") from None
        nh, nw = self.new_size
        if nh and nw:
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR).reshape(nh, nw, -1)
        h, w = img.shape[:2]
        if label_type == PIXEL:
            try:
                lab = read_label(entry.label, self.num_classes, self.label_ignore)
            except CaffeError as e:
                raise CaffeError(f"{entry.where}: {e}") from None
            if nh and nw:
                lab = cv2.resize(lab, (nw, nh), interpolation=cv2.INTER_NEAREST)
            if lab.shape != (h, w):
                raise CaffeError(f"{entry.where}: label {entry.label} is {lab.shape[0]}x{lab.shape[1]} "
                                   f"but image {entry.image} is {h}x{w}")
        else:
            value = int(entry.label) if label_type == IMAGE else self.ignore_label
            lab = np.full((h, w), value, np.uint8)
        return img, lab


class ImageSegSource(Dataset):
    """The samples of one ImageSegData layer, indexed by stream position (see module doc)."""

    def __init__(self, lp, phase: str = "TRAIN", seed: int = 0, num_classes: int | None = None,
                 label_ignore: int | None = None):
        p, t = lp.image_data_param, lp.transform_param
        self.name, self.tops = lp.name, list(lp.top)
        if t.mean_file or p.mean_file:
            raise CaffeError(f"layer {lp.name!r}: mean_file is not supported by ImageSegData; use mean_value")
        if bool(p.new_height) != bool(p.new_width):
            raise CaffeError(f"layer {lp.name!r}: new_height and new_width must be set together")
        if not p.source:
            raise CaffeError(f"layer {lp.name!r}: image_data_param.source (the list file) is not set")
        self.label_type = _label_type(p)
        self.transform = Transform(
            crop=int(t.crop_size), mirror=bool(t.mirror), mean=tuple(float(v) for v in t.mean_value),
            scale=float(t.scale), train=phase.upper() == "TRAIN", ignore_label=int(p.ignore_label),
            new_size=(int(p.new_height), int(p.new_width)), color=bool(p.is_color),
            num_classes=num_classes, label_ignore=label_ignore)
        if self.transform.mean and len(self.transform.mean) not in (1, 3 if p.is_color else 1):
            raise CaffeError(f"layer {lp.name!r}: give 1 mean_value or one per channel")
        self.entries = read_list(p.source, p.root_folder, self.label_type)
        self.batch_size = int(p.batch_size) or 1
        self.seed = int(seed)
        self.item_index = ListOrder(len(self.entries), p.shuffle, self.seed, p.rand_skip, f"layer {lp.name!r}")

    @classmethod
    def for_net(cls, lp, phase: str, seed: int, net=None):
        """The source of layer ``lp``; with ``net``, label values are checked against the classes
        and ignore value of the losses that read them (``label_classes``)."""
        tops = list(lp.top)
        classes, ignore = label_classes(net, tops[1]) if net is not None and len(tops) > 1 else (None, None)
        return cls(lp, phase, seed, classes, ignore)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, pos: int):
        """(data, label, dims) of stream position ``pos``, or the CaffeError it raised."""
        try:
            entry = self.entries[self.item_index(pos)]
            img, lab = self.transform.read(entry, self.label_type)
            data, label, dims = self.transform(img, lab, np.random.default_rng([self.seed & 0xFFFFFFFF, pos]))
            return data, label, np.array(dims, np.float32).reshape(1, 1, 2), entry.where
        except CaffeError as e:
            return e


def _label_type(p) -> int:
    """The fork's label_type; unset means PIXEL (its released prototxts rely on that)."""
    if not p.has_label:
        return NONE
    return int(p.label_type) if p.HasField("label_type") else PIXEL


_LABEL_PASSING = {"Interp", "Crop", "Padding", "Split", "Flatten", "Reshape", "Silence"}
_LABEL_READERS = {"SoftmaxWithLoss", "SegAccuracy", "Accuracy", "InfogainLoss", "MultinomialLogisticLoss"}


def label_classes(net, label_top: str) -> tuple[int | None, int | None]:
    """(class count, ignore value) the net's losses and accuracies read ``label_top`` with:
    the channel count of the score blob beside it and the reader's ``ignore_label``. (None,
    None) when no such reader is found, or readers disagree on the count. The data layer then
    checks each label file once, when first read, instead of letting the loss fail on a batch."""
    derived, counts, ignores = {label_top}, set(), set()
    for layer in net.layers:
        bottoms = list(layer.bottom_names)
        if layer.type in _LABEL_PASSING and bottoms and bottoms[0] in derived:
            derived.update(layer.top_names)
        elif layer.type in _LABEL_READERS and len(bottoms) > 1 and bottoms[1] in derived:
            shape = net.blob_shapes.get(bottoms[0])
            if shape is not None and len(shape) > 1 and shape[1]:
                counts.add(int(shape[1]))
            ignores.update(_ignore_labels(layer.param))
    if len(counts) != 1:
        return None, None
    return counts.pop(), (ignores.pop() if len(ignores) == 1 else None)


def _ignore_labels(lp) -> list[int]:
    """The ignore_label values a loss or accuracy layer sets (none where it sets none)."""
    out = [int(lp.loss_param.ignore_label)] if lp.loss_param.HasField("ignore_label") else []
    if lp.HasField("accuracy_param") and lp.accuracy_param.HasField("ignore_label"):
        out.append(int(lp.accuracy_param.ignore_label))
    if lp.HasField("seg_accuracy_param"):
        out.extend(int(v) for v in lp.seg_accuracy_param.ignore_label)
    return out
