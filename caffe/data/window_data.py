"""WindowData's source: R-CNN training windows, as BVLC's window_data_layer.cpp samples them.

The window file (``window_data_param.source``) repeats, whitespace-separated::

    # image_index
    img_path            (relative to root_folder)
    channels height width
    num_windows
    class_index overlap x1 y1 x2 y2      (num_windows lines, inclusive pixel corners)

A window with ``overlap >= fg_threshold`` is foreground (its class must be > 0); one with
``overlap < bg_threshold`` is background (class and overlap forced to 0); the others are
dropped. A window's image is the ``image_index``-th image of the file. Each batch holds
``batch_size - int(batch_size * fg_fraction)`` background windows, then the foreground ones,
each drawn uniformly with replacement (Caffe's ``rand() % count``) and mirrored with
probability 1/2 when ``transform_param.mirror``. A window (with ``context_pad`` pixels of
context at the output scale; ``crop_mode: square`` makes it square first) is cut from the
colour image, clipped to the image, warped (bilinear) to its share of the
``crop_size`` x ``crop_size`` output and placed at its padding offset; the rest stays 0.
Pixels become (pixel - mean) * ``window_data_param.scale`` (Caffe reads this layer's scale
there, not in transform_param), the mean from ``transform_param`` (mean_value, or a
mean_file whose centre crop_size square is used). Coordinates are computed in float32 and
rounded half away from zero, as the C++ does.
"""
from __future__ import annotations

import math

import numpy as np

from .. import CaffeError
from .base import _Source, _batch_size, _rng, read_mean_file


def _round(v) -> int:
    """C's round(): half away from zero."""
    v = float(v)
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def read_window_file(path: str, root_folder: str, fg_threshold: float, bg_threshold: float, where: str):
    """-> (images [(path, (c, h, w))], foreground windows, background windows); a window is
    (image index, label, overlap, x1, y1, x2, y2)."""
    try:
        with open(path, encoding="utf-8") as f:
            tokens = f.read().split()
    except OSError as e:
        raise CaffeError(f"{where}: failed to open window file {path}: {e.strerror or e}") from None
    if len(tokens) < 2:
        raise CaffeError(f"{where}: window file {path} is empty")
    images, fg, bg = [], [], []
    i = 0

    def take(kind, what):
        nonlocal i
        if i >= len(tokens):
            raise CaffeError(f"{where}: {path}: the file ends where {what} should be")
        try:
            value = kind(tokens[i])
        except ValueError:
            raise CaffeError(f"{where}: {path}: expected {what}, got {tokens[i]!r}") from None
        i += 1
        return value

    fg_t, bg_t = np.float32(fg_threshold), np.float32(bg_threshold)
    while i + 1 < len(tokens):
        if tokens[i] != "#":
            raise CaffeError(f"{where}: {path}: expected '#' to start image {len(images)}, got {tokens[i]!r}")
        i += 1
        index = take(int, "an image index after '#'")
        image = root_folder + take(str, "an image path")
        size = tuple(take(int, f"the channels/height/width of {image}") for _ in range(3))
        images.append((image, size))
        for _ in range(take(int, f"the window count of {image}")):
            label = take(int, f"a class index in {image}'s windows")
            overlap = np.float32(take(float, f"an overlap in {image}'s windows"))
            box = tuple(take(int, f"x1 y1 x2 y2 in {image}'s windows") for _ in range(4))
            if overlap >= fg_t:
                if label <= 0:
                    raise CaffeError(f"{where}: {path}: foreground window of {image} has class {label}; "
                                     "foreground classes must be > 0")
                fg.append((index, label, float(overlap)) + box)
            elif overlap < bg_t:
                bg.append((index, 0, 0.0) + box)
    if i != len(tokens):
        raise CaffeError(f"{where}: {path}: stray token {tokens[i]!r} at the end")
    for w in fg + bg:
        if not 0 <= w[0] < len(images):
            raise CaffeError(f"{where}: {path}: a window names image index {w[0]}, but the file lists "
                             f"{len(images)} images (indices count from 0 in file order)")
    return images, fg, bg


class WindowSource(_Source):
    """WindowData's batches (see the module doc); tops data (N x 3 x crop x crop), label (N)."""

    def __init__(self, lp, phase: str = "TRAIN", seed: int = 0):
        super().__init__(lp, phase, seed)
        p, tp = lp.window_data_param, lp.transform_param
        self.batch_size = _batch_size(p.batch_size, self.where, "window_data_param")
        self.crop = int(tp.crop_size)
        if self.crop <= 0:
            raise CaffeError(f"{self.where}: transform_param.crop_size must be positive (the warped size)")
        self.context_pad = int(p.context_pad)
        if 2 * self.context_pad >= self.crop and self.context_pad:
            raise CaffeError(f"{self.where}: context_pad {self.context_pad} leaves nothing of crop_size {self.crop}")
        self.mirror, self.scale = bool(tp.mirror), np.float32(p.scale)
        self.square = p.crop_mode == "square"
        self.fg_fraction = np.float32(p.fg_fraction)
        self.images, self.fg, self.bg = read_window_file(p.source, p.root_folder, p.fg_threshold, p.bg_threshold,
                                                         self.where)
        self.channels = self.images[-1][1][0]
        for path, (c, _, _) in self.images:
            if c != 3:
                raise CaffeError(f"{self.where}: {path} is listed with {c} channels; WindowData reads images "
                                 "in colour (3 channels)")
        self.mean, self.mean_values = None, np.asarray(tp.mean_value, np.float32)
        if tp.HasField("mean_file"):
            if self.mean_values.size:
                raise CaffeError(f"{self.where}: cannot specify mean_file and mean_value at the same time")
            self.mean = read_mean_file(tp.mean_file, self.where)
            off = (self.mean.shape[2] - self.crop) // 2
            if self.mean.shape[0] != 3 or off < 0 or off + self.crop > min(self.mean.shape[1:]):
                raise CaffeError(f"{self.where}: mean_file is {'x'.join(map(str, self.mean.shape))}; WindowData "
                                 f"needs 3 channels and a centred {self.crop}x{self.crop} square inside it")
            self.mean = self.mean[:, off:off + self.crop, off:off + self.crop]
        elif self.mean_values.size not in (0, 1, 3):
            raise CaffeError(f"{self.where}: specify either 1 mean_value or as many as channels: 3")
        self.num_fg = int(np.float32(self.batch_size) * self.fg_fraction)
        if not self.bg or not self.fg:
            raise CaffeError(f"{self.where}: {p.source} has {len(self.fg)} foreground and {len(self.bg)} "
                             "background windows; WindowData samples from both, so it needs at least one of each")
        self.cache = None
        if p.cache_images:
            self.cache = {}
            for path, _ in self.images:
                try:
                    with open(path, "rb") as f:
                        self.cache[path] = np.frombuffer(f.read(), np.uint8)
                except OSError as e:
                    raise CaffeError(f"{self.where}: could not open or find file {path}: {e.strerror}") from None

    def __len__(self) -> int:
        return len(self.fg) + len(self.bg)

    def top_shapes(self) -> list[tuple]:
        """N x channels x crop x crop and N (Caffe's DataLayerSetUp)."""
        return [(self.batch_size, self.channels, self.crop, self.crop), (self.batch_size,)]

    def _image(self, path: str) -> np.ndarray:
        if self.cache is not None:
            import cv2
            img = cv2.imdecode(self.cache[path], cv2.IMREAD_COLOR)
            if img is None:
                raise CaffeError(f"{self.where}: {path} is not a readable image")
            return img
        from ..util.images import read_image
        try:
            return read_image(path, color=True)
        except CaffeError as e:
            raise CaffeError(f"{self.where}: {e}") from None

    def item(self, pos: int):
        import cv2
        is_fg = pos % self.batch_size >= self.batch_size - self.num_fg
        rng = _rng(self.seed, pos)
        windows = self.fg if is_fg else self.bg
        window = windows[int(rng.integers(2 ** 32)) % len(windows)]
        do_mirror = self.mirror and bool(rng.integers(2))
        path = self.images[window[0]][0]
        img = self._image(path)
        x1, y1, x2, y2 = window[3:]
        crop, f32 = self.crop, np.float32
        out_h = out_w = crop
        pad_h = pad_w = 0
        if self.context_pad > 0 or self.square:
            context_scale = f32(crop) / f32(crop - 2 * self.context_pad)
            half_h, half_w = f32((y2 - y1 + 1) / 2.0), f32((x2 - x1 + 1) / 2.0)
            cx, cy = f32(x1) + half_w, f32(y1) + half_h
            if self.square:
                half_h = half_w = max(half_h, half_w)
            x1, x2 = _round(cx - half_w * context_scale), _round(cx + half_w * context_scale)
            y1, y2 = _round(cy - half_h * context_scale), _round(cy + half_h * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            px1, py1 = max(0, -x1), max(0, -y1)
            px2, py2 = max(0, x2 - img.shape[1] + 1), max(0, y2 - img.shape[0] + 1)
            x1, x2, y1, y2 = x1 + px1, x2 - px2, y1 + py1, y2 - py2
            sx, sy = f32(crop) / f32(unclipped_w), f32(crop) / f32(unclipped_h)
            out_w, out_h = _round(f32(x2 - x1 + 1) * sx), _round(f32(y2 - y1 + 1) * sy)
            px1, px2 = _round(f32(px1) * sx), _round(f32(px2) * sx)
            py1 = _round(f32(py1) * sy)
            pad_h, pad_w = py1, (px2 if do_mirror else px1)
            out_h, out_w = min(out_h, crop - pad_h), min(out_w, crop - pad_w)
        if not (0 <= x1 <= x2 < img.shape[1] and 0 <= y1 <= y2 < img.shape[0]) or out_h <= 0 or out_w <= 0:
            raise CaffeError(f"{self.where}: window ({window[3]}, {window[4]}, {window[5]}, {window[6]}) does not "
                             f"fit image {path} ({img.shape[1]}x{img.shape[0]}) once padded and clipped")
        patch = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        if do_mirror:
            patch = patch[:, ::-1]
        values = patch.transpose(2, 0, 1).astype(np.float32)
        if self.mean is not None:
            values -= self.mean[:, pad_h:pad_h + out_h, pad_w:pad_w + out_w]
        elif self.mean_values.size:
            values -= self.mean_values.reshape(-1, 1, 1)
        out = np.zeros((3, crop, crop), np.float32)
        out[:, pad_h:pad_h + out_h, pad_w:pad_w + out_w] = values * self.scale
        return out, np.float32(window[1]), f"{path} window {window[3:]}"
