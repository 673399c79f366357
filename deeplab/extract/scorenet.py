"""The net side of score-map extraction: a test prototxt cut down to its score blob.

The test net's data layer (ImageSegData) gives the preprocessing: ``transform_param.mean_value``
(BGR), ``scale`` and ``crop_size``; an image (BGR, 0-255) minus the mean is placed top-left on
a zero canvas (zero after subtraction = the mean colour, the fork's padding) of crop x crop
pixels. An image larger than the crop is never truncated: its canvas grows to the smallest
size whose output still covers it.

The net is cut down to the layers the score blob needs (no MatWrite side effects, no
label), and the score blob's stride-``zoom`` rows and columns covering the image are kept:
``rows = ceil((H - 1 + offset) / zoom) + 1``, since the fork's zoom Interp maps ``r`` rows
onto ``(r - 1) * zoom + 1`` pixels, of which a Padding crop between the Interp and MatWrite
(DeepLab's 514 nets: -7 / -8) drops the first ``offset``. The batch run over an image list
is deeplab.extract.runner.
"""
from __future__ import annotations

import re
import sys

import numpy as np
import torch
import torch.nn.functional as F

from .. import USER_ERRORS, DeepLabError
from caffe.net import PHASES, Net, filter_layers
from caffe.precision import AMP_CHOICES, resolve_amp
from caffe.prototxt import parse_net
from .scoremaps import rows_needed

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- the net
def _bytes(n: int) -> str:
    for unit, size in (("PiB", 2 ** 50), ("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} bytes"


def memory_needed(e: BaseException) -> str | None:
    """How much memory an out-of-memory error (torch's CUDA or CPU allocator, numpy) says was
    asked for, e.g. "2.00 GiB" ("an unknown amount" where it does not say); None when ``e``
    is not about memory."""
    text = str(e)
    oom = (isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) or "can't allocate memory" in text
           or "out of memory" in text.lower())
    if not oom:
        return None
    m = re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGTPE]i?B)", text)  # CUDA's caching allocator
    if m:
        return m.group(1)
    m = re.search(r"tried to allocate (\d+) bytes", text)  # the CPU allocator
    if m:
        return _bytes(int(m.group(1)))
    m = re.search(r"[Uu]nable to allocate ([\d.]+ ?[KMGTPE]i?B)", text)  # numpy
    return m.group(1) if m else "an unknown amount"


def find_data_layer(layers):
    """The test net's ImageSegData layer (its transform_param is the preprocessing)."""
    found = [lp for lp in layers if lp.type == "ImageSegData"]
    if not found:
        types = sorted({lp.type for lp in layers})
        raise DeepLabError(f"the test net has no ImageSegData layer in the TEST phase (layer types: {types})")
    return found[0]


def default_blob(layers) -> str:
    """The stride-8 blob behind what the fork dumped: walking back from MatWrite through
    Padding layers, the bottom of the zoom Interp (DeepLab's 514 nets: fc8, Interp, Padding
    -7/-8, MatWrite; :func:`mat_write_chain` gives the offset); MatWrite's own bottom if no
    zoom Interp leads there; without MatWrite the only fc8* top."""
    producer = {t: lp for lp in layers for t in lp.top}
    for lp in layers:
        if lp.type == "MatWrite" and lp.bottom:
            src = producer.get(lp.bottom[0])
            for _ in range(len(layers)):
                if src is None or src.type not in ("Padding", "Interp") or not src.bottom:
                    break
                if src.type == "Interp":
                    if _is_zoom(src):
                        return src.bottom[0]
                    break
                src = producer.get(src.bottom[0])
            return lp.bottom[0]
    fc8 = sorted({t for lp in layers for t in lp.top if t.startswith("fc8")})
    if len(fc8) == 1:
        return fc8[0]
    raise DeepLabError(f"cannot tell which blob holds the scores (no MatWrite; fc8 blobs: {fc8}); pass --blob NAME")


def mat_write_chain(layers, blob: str):
    """Follow ``blob`` through the Interp / Padding layers that lead to MatWrite.

    Returns (MatWrite's bottom, offset) where score row ``r`` of ``blob`` lies on image pixel
    ``r * zoom - offset`` (the fork's MatWrite bottom is aligned with the image), or
    (None, 0) when ``blob`` does not reach MatWrite that way.
    """
    consumers: dict[str, list] = {}
    for lp in layers:
        for b in set(lp.bottom):
            consumers.setdefault(b, []).append(lp)
    cur, shift, scale = blob, 0, 1  # index in cur = (blob index) * scale + shift
    for _ in range(len(layers)):
        nxt = [lp for lp in consumers.get(cur, []) if lp.type in ("MatWrite", "Interp", "Padding")]
        if len(nxt) != 1:
            return None, 0
        lp = nxt[0]
        if lp.type == "MatWrite":
            return cur, -shift
        if lp.type == "Interp":
            p = lp.interp_param
            if not _is_zoom(lp):
                return None, 0
            shift, scale = (shift + p.pad_beg) * p.zoom_factor, scale * p.zoom_factor
        else:
            shift += lp.padding_param.pad_beg
        cur = lp.top[0]
    return None, 0


def prune_layers(layers, targets) -> list:
    """The layers needed to compute ``targets`` (walking back from the end), in order."""
    needed, kept = set(targets), []
    for lp in reversed(layers):
        if needed & set(lp.top):
            kept.append(lp)
            needed |= set(lp.bottom)
    return kept[::-1]


def _mean_scale(lp) -> tuple[np.ndarray, float]:
    tp = lp.transform_param
    if tp.mean_file:
        raise DeepLabError(f"layer {lp.name!r}: transform_param.mean_file is not supported; give mean_value x3 (BGR)")
    means = list(tp.mean_value)
    if len(means) not in (0, 1, 3):
        raise DeepLabError(f"layer {lp.name!r}: transform_param needs 1 or 3 mean_value entries, got {len(means)}")
    mean = np.array(means * (3 if len(means) == 1 else 1) if means else [0.0] * 3, dtype=np.float32)
    return mean, float(tp.scale) if tp.HasField("scale") else 1.0


class ScoreNet:
    """A test prototxt cut down to its score blob, with weights, preprocessing and geometry.

    ``blob`` defaults to :func:`default_blob`. ``zoom`` is the blob's stride (the zoom_factor
    of the Interp after it, checked against the strides the net really has). With
    ``want_mat`` the forward also returns MAT_WRITE's upsampled blob over the whole canvas.
    ``offset``: score row r lies on pixel ``r * zoom - offset`` (0 unless the net crops the
    upsampled map before MatWrite, as DeepLab's 514 nets do by 7 pixels); it is what the
    ``.npy`` sidecar records. Weights: every layer the scores need must get them (scores from
    fillers would be silently wrong); layers of the weights file that the net lacks are ignored
    with a warning, as Caffe does, or refused with ``strict``; NaN/Inf weights are an error
    naming the layer. ``amp``: None, "fp32" or "none" (float32), "bf16" or "fp16" autocast, or
    "auto" (caffe.precision.resolve_amp: on the CPU the faster of the two for this net, its one
    line said through ``say``); ``precision`` is what it came to ("bf16", "fp16" or None).
    ``compile`` (True, or a torch.compile backend name) runs the engine's forward compiled
    (caffe/compiled.py: float32, so ``auto`` means float32 there; one compile per canvas size,
    tens of seconds each, at most caffe.compiled.MAX_VARIANTS sizes).
    """

    def __init__(self, model, weights=None, blob: str | None = None, mapping=None, device="cpu",
                 amp: str | None = None, want_mat: bool = False, channels_last: bool = True, strict: bool = False,
                 backend: str = "engine", onnx_cache: str | None = None, say=None, compile: bool | str = False):
        param = parse_net(model, mapping)
        if compile and (amp not in (None, "auto", "fp32", "none") or backend != "engine"):
            raise DeepLabError("--compile compiles the engine's float32 forward: drop --amp bf16/fp16 and --backend")
        if compile:
            amp = None      # auto and fp32 both mean float32 there
        if not len(param.layer):
            raise DeepLabError(f"{model} defines no layers (an empty file, or not a net prototxt?)")
        layers = filter_layers(param, PHASES["TEST"])
        data = find_data_layer(layers)
        self.input_name = data.top[0]
        self.mean, self.scale = _mean_scale(data)
        self.crop = int(data.transform_param.crop_size) or None
        tops = {t for lp in layers for t in lp.top}
        self.blob = blob or default_blob(layers)
        if self.blob not in tops:
            raise DeepLabError(f"--blob {self.blob!r} is not a blob of the test net (blobs: {sorted(tops)})")
        if self.blob == self.input_name:
            raise DeepLabError(f"--blob {self.blob!r} is the input image, not a score map")
        interp = next((lp for lp in layers if lp.type == "Interp" and lp.bottom[:1] == [self.blob]), None)
        chain_end, self.offset = mat_write_chain(layers, self.blob)
        self.mat_chain_end = chain_end
        # The map MatWrite reads must cover the image whatever the format, so that .npy and .mat
        # dumps come from the same canvas (a 514 net's Padding crops the zoomed map's end).
        self.cover_blob = chain_end if chain_end not in (None, self.blob) else None
        self.mat_blob = self.cover_blob if want_mat else None
        self.param = _pruned(param, layers, [self.blob] + ([self.mat_blob] if self.mat_blob else []))
        self._shape_param = _pruned(param, layers, [self.blob] + ([self.cover_blob] if self.cover_blob else []))
        self._shapes: dict[tuple[int, int], dict | None] = {}
        self.probe = probe = self.crop or 513
        self.net = Net(self.param, "TEST", input_shapes={self.input_name: (1, 3, probe, probe)})
        if compile:
            from caffe.compiled import compile_net
            compile_net(self.net, None if compile is True else str(compile))
        self.num_classes = int(self.net.blob_shapes[self.blob][1])
        self.zoom = self._stride(probe, interp)
        self.want_mat = want_mat
        if weights is not None:
            self._load_weights(weights, model, {lp.name for lp in param.layer}, strict)
        self.device = torch.device(device)
        self.net.to(self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.net.eval()
        if amp is not None and amp not in AMP_CHOICES:
            raise DeepLabError(f"--amp must be one of {', '.join(AMP_CHOICES)}; got {amp!r}")
        self.backend = backend
        if backend == "onnxruntime" and amp == "auto":
            amp = None    # onnxruntime runs float32
        # The autocast the forward runs under, by name (None: float32); "auto" measured here.
        self.precision = resolve_amp(amp, self.net, self.device, channels_last=channels_last, say=say)
        self.amp = _AMP.get(self.precision) if self.precision else None
        self.onnx = None
        if backend == "onnxruntime":   # the same net, exported (deeplab/extract/onnx_backend.py)
            if self.device.type != "cpu" or self.amp is not None:
                raise DeepLabError("--backend onnxruntime runs float32 on the CPU: drop --gpu and --amp")
            from .onnx_backend import OnnxRunner
            self.onnx = OnnxRunner(self, [self.blob] + ([self.mat_blob] if self.mat_blob else []), onnx_cache,
                                   threads=torch.get_num_threads())
        elif backend != "engine":
            raise DeepLabError(f"--backend must be engine or onnxruntime, got {backend!r}")

    def _load_weights(self, weights, model, net_layers: set[str], strict: bool) -> None:
        """Copy ``weights`` into the pruned net and check them (see the class doc)."""
        report = self.net.copy_from(weights)
        missing = [lay.name for lay in self.net.layers if len(lay.blobs) and lay.name not in report["copied"]]
        foreign = [n for n in report["ignored"] if n not in net_layers]
        if missing and not report["copied"] and foreign:
            raise DeepLabError(f"{weights}: none of its {len(foreign)} layer(s) matches a layer of {model} "
                               f"(a caffemodel for another net?); no weights for {missing}")
        if missing:
            raise DeepLabError(f"{weights}: no weights for layer(s) {missing} of {model}")
        if foreign:
            shown = ", ".join(foreign[:8]) + (", ..." if len(foreign) > 8 else "")
            if strict:
                raise DeepLabError(f"--strict: {weights} has {len(foreign)} layer(s) that {model} lacks: {shown}")
            print(f"warning: {weights} has {len(foreign)} layer(s) that {model} lacks, ignored as Caffe does "
                  f"(--strict refuses): {shown}", file=sys.stderr)
        for lay in self.net.layers:
            for i, blob in enumerate(lay.blobs):
                bad = int((~torch.isfinite(blob.detach())).sum())
                if bad:
                    raise DeepLabError(f"{weights}: layer {lay.name!r} blob {i} holds {bad} NaN/Inf value(s) "
                                       f"(a diverged or corrupt snapshot)")

    def identity(self) -> str:
        """The cut-down net as prototxt text, placeholders filled, without the fields that only
        name files (list, root folder): what decides the scores, for deeplab.provenance."""
        from google.protobuf import text_format

        param = type(self.param)()
        param.CopyFrom(self.param)
        for lp in param.layer:
            _clear_file_fields(lp)
        return text_format.MessageToString(param)

    def _stride(self, probe: int, interp) -> int:
        # The stride from two input sizes 64 apart (robust to blobs cropped after upsampling).
        o1, o2 = self.out_hw(probe, probe), self.out_hw(probe + 64, probe + 64)
        if o1 is None or o2 is None or o2[0] <= o1[0]:
            raise DeepLabError(f"blob {self.blob!r} has {o1} then {o2} rows and columns for inputs of "
                               f"{probe} and {probe + 64} pixels; cannot tell its stride")
        stride = 64 / (o2[0] - o1[0])
        if interp is not None and _is_plain_zoom(interp):
            zoom = int(interp.interp_param.zoom_factor)
            if abs(stride - zoom) > 0.5:
                raise DeepLabError(f"layer {interp.name!r}: zoom_factor {zoom} but blob {self.blob!r} has stride "
                                   f"{stride:.2f}")
            return zoom
        return max(1, round(stride))

    def out_hw(self, h: int, w: int, blob: str | None = None) -> tuple[int, int] | None:
        """``blob``'s (default: the score blob's) rows and columns for an ``h`` x ``w`` input, by
        shape inference only; None where the net does not accept that size (e.g. MSc branches
        that disagree)."""
        key = (h, w)
        if key not in self._shapes:
            try:
                with torch.device("meta"):
                    shapes = Net(self._shape_param, "TEST", input_shapes={self.input_name: (1, 3, h, w)}).blob_shapes
                self._shapes[key] = {b: tuple(shapes[b][2:4]) for b in (self.blob, self.cover_blob) if b}
            except USER_ERRORS:
                self._shapes[key] = None
        found = self._shapes[key]
        return None if found is None else found[blob or self.blob]

    def rows(self, size: int) -> int:
        """Score rows covering ``size`` pixels at this stride and offset:
        ceil((size - 1 + offset) / zoom) + 1."""
        return rows_needed(size, self.zoom, max(self.offset, 0))

    def canvas(self, h: int, w: int) -> tuple[int, int]:
        """The input size for an ``h`` x ``w`` image: the crop, or (per axis) the smallest larger
        size the net accepts whose scores, and the map MatWrite reads, cover the image."""
        ref = self.crop or self.probe
        sizes = []
        for axis, size in ((0, h), (1, w)):
            s = start = max(self.crop or size, size)
            for _ in range(64):
                if self._covers(s, ref, axis, size):
                    break
                s += 1
            else:
                raise DeepLabError(f"no input size from {start} to {s} gives blob {self.blob!r} the "
                                   f"{self.rows(size)} outputs that cover {size} pixels at stride {self.zoom}")
            sizes.append(s)
        if self.out_hw(*sizes) is None:
            raise DeepLabError(f"the net does not accept a {sizes[0]}x{sizes[1]} input (for a {h}x{w} image)")
        return sizes[0], sizes[1]

    def _covers(self, s: int, ref: int, axis: int, size: int) -> bool:
        hw = (s, ref) if axis == 0 else (ref, s)
        out = self.out_hw(*hw)
        if out is None or out[axis] < self.rows(size):
            return False
        return self.cover_blob is None or self.out_hw(*hw, blob=self.cover_blob)[axis] >= size

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """BGR uint8 H x W x 3 -> float32 (image - mean) * scale, as Caffe's DataTransformer."""
        out = image.astype(np.float32) - self.mean
        if self.scale != 1.0:
            out *= self.scale
        return out

    @torch.inference_mode()
    def forward(self, batch_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Run an N x H x W x 3 float32 canvas batch; return the score blob (N x C x h x w float32)
        and, with ``want_mat``, the zoomed blob over the whole canvas (else None)."""
        x = torch.from_numpy(batch_nhwc).permute(0, 3, 1, 2)  # NCHW view, channels_last strides
        outputs = [self.blob] + ([self.mat_blob] if self.mat_blob else [])
        if self.onnx is not None:
            blobs = {k: torch.from_numpy(v) for k, v in self.onnx.run(x.numpy()).items()}
        else:
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                blobs = self.net({self.input_name: x}, outputs=outputs)
        scores = blobs[self.blob].float()
        mat = None
        if self.want_mat:
            if self.mat_blob:
                mat = blobs[self.mat_blob].float()
            else:  # the fork's zoom Interp: corners aligned, in + (in - 1)(zoom - 1)
                h, w = scores.shape[2:]
                size = (h + (h - 1) * (self.zoom - 1), w + (w - 1) * (self.zoom - 1))
                mat = F.interpolate(scores, size=size, mode="bilinear", align_corners=True)
            mat = mat.cpu().numpy()
        return scores.cpu().numpy(), mat


def _pruned(param, layers, targets):
    """A copy of ``param`` holding only the ``layers`` that ``targets`` need."""
    out = type(param)()
    out.CopyFrom(param)
    del out.layer[:]
    out.layer.extend(prune_layers(layers, targets))
    return out


def _clear_file_fields(msg) -> None:
    """Clear every ``source`` / ``root_folder`` / ``prefix`` string below ``msg``."""
    for field, value in msg.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for sub in ([value] if hasattr(value, "ListFields") else value):
                _clear_file_fields(sub)
        elif field.name in ("source", "root_folder", "prefix"):
            msg.ClearField(field.name)


def _is_zoom(lp) -> bool:
    """An Interp sized by zoom_factor alone (pad_beg/pad_end allowed)."""
    p = lp.interp_param
    return p.HasField("zoom_factor") and not p.HasField("shrink_factor") and not p.HasField("height")


def _is_plain_zoom(lp) -> bool:
    """An Interp sized by zoom_factor alone, without cropping its input."""
    p = lp.interp_param
    return _is_zoom(lp) and not p.pad_beg and not p.pad_end
