"""Score maps on disk: what the extraction step writes and the CRF stage reads. No torch here.

Two formats:

* ``<id>.npy`` + ``<id>.json``: the stride-8 network output (C x h x w, float16 by default)
  with a sidecar ``{"height": H, "width": W, "zoom": 8, "classes": C, "offset": 0}`` recording
  the image size and the alignment: row ``r`` of the map lies on pixel ``r * zoom - offset``
  (``offset`` is 0 when absent; DeepLab's 514 nets crop their zoomed map by 7, so 7 there).
  Readers upsample it with the Interp layer's alignment, drop ``offset`` rows and columns
  and crop to H x W.
* ``<id>_blob_0.mat``: what the DeepLab fork's MAT_WRITE layer wrote, variable ``data`` in
  MATLAB order W x H x C (x N=1), i.e. the C x H x W blob stored column-major
  (``data[w, h, c] = blob[c, h, w]``), already upsampled but covering the padded crop; the
  image size is needed to crop it, as the original ``densecrf`` program did.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import numpy as np

from .. import USER_ERRORS, DeepLabError
from caffe.util.files import atomic_path, write_bytes_atomic


@dataclass
class ScoreMap:
    """Scores at full image resolution: ``scores`` is float32 C x H x W."""

    scores: np.ndarray
    height: int
    width: int

    @property
    def classes(self) -> int:
        return int(self.scores.shape[0])


def zoomed_size(size: int, zoom: int) -> int:
    """The Interp layer's output size for ``zoom_factor``: in + (in - 1)(zoom - 1)."""
    return size + (size - 1) * (zoom - 1)


def _interp_axis(n_in: int, n_out: int, start: int, n_keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source index pairs and weights of Caffe's Interp along one axis (corners aligned), for
    output indices ``start`` .. ``start + n_keep - 1``."""
    # Caffe interp.cpp: ratio = (in - 1) / (out - 1) in float; src = ratio * dst;
    # i0 = floor(src); i1 = i0 + 1 unless i0 is the last row; lambda = src - i0.
    ratio = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    src = np.arange(start, start + n_keep, dtype=np.float32) * ratio
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    lam = (src - i0).astype(np.float32)
    return i0, i1, lam


def rows_needed(size: int, zoom: int, offset: int = 0) -> int:
    """Stride-``zoom`` rows whose zoomed map, less ``offset`` rows, covers ``size`` pixels:
    ceil((size - 1 + offset) / zoom) + 1."""
    return -(-(size - 1 + offset) // zoom) + 1


def upsample_scores(scores: np.ndarray, zoom: int, height: int, width: int, offset: int = 0) -> np.ndarray:
    """Upsample C x h x w scores like the fork's Interp layer (``zoom_factor``), crop to H x W.

    Output size before the crop is h + (h - 1)(zoom - 1); bilinear with corners aligned
    (source coordinate = out_index * (in - 1) / (out - 1), i.e. out_index / zoom). The first
    ``offset`` rows and columns of the zoomed map are dropped (a Padding crop after the
    Interp): pixel y samples source coordinate (y + offset) / zoom. Only the kept rows and
    columns are computed. Returns float32 C x height x width.
    """
    scores = np.asarray(scores)
    if scores.ndim != 3:
        raise DeepLabError(f"score map must be C x h x w, got shape {scores.shape}")
    if zoom < 1:
        raise DeepLabError(f"zoom must be >= 1, got {zoom}")
    if offset < 0:
        raise DeepLabError(f"offset must be >= 0 (row r lies on pixel r * zoom - offset), got {offset}")
    _, h, w = scores.shape
    out_h, out_w = zoomed_size(h, zoom), zoomed_size(w, zoom)
    if height < 1 or width < 1 or height + offset > out_h or width + offset > out_w:
        shifted = f" less the first {offset} rows and columns" if offset else ""
        raise DeepLabError(f"score map {h}x{w} at zoom {zoom} covers {out_h}x{out_w} pixels{shifted}, "
                           f"not the image's {height}x{width} (it needs {rows_needed(height, zoom, offset)}x"
                           f"{rows_needed(width, zoom, offset)} rows and columns)")
    s = scores.astype(np.float32, copy=False)
    r0, r1, rl = _interp_axis(h, out_h, offset, height)
    rows = s[:, r0, :] * (1 - rl)[None, :, None] + s[:, r1, :] * rl[None, :, None]
    c0, c1, cl = _interp_axis(w, out_w, offset, width)
    out = rows[:, :, c0] * (1 - cl)[None, None, :] + rows[:, :, c1] * cl[None, None, :]
    return np.ascontiguousarray(out, dtype=np.float32)


def sidecar_path(path_npy: str | os.PathLike) -> str:
    """``<id>.npy`` -> ``<id>.json``."""
    return os.path.splitext(os.fspath(path_npy))[0] + ".json"


def save_scores(path_npy, scores: np.ndarray, height: int, width: int, zoom: int = 8,
                dtype="float16", offset: int = 0) -> None:
    """Write stride-``zoom`` C x h x w scores to ``<id>.npy`` and the sidecar ``<id>.json``.

    ``height`` x ``width`` is the image's size; row ``r`` lies on pixel ``r * zoom - offset``,
    and the zoomed map less its first ``offset`` rows and columns must cover the image. Both
    files are written atomically (the sidecar first, so a present ``.npy`` always has its sidecar).
    """
    scores = np.asarray(scores)
    if scores.ndim != 3:
        raise DeepLabError(f"{path_npy}: scores must be C x h x w, got shape {scores.shape}")
    if zoom < 1 or offset < 0:
        raise DeepLabError(f"{path_npy}: zoom must be >= 1 and offset >= 0, got zoom {zoom}, offset {offset}")
    c, h, w = scores.shape
    if zoomed_size(h, zoom) < height + offset or zoomed_size(w, zoom) < width + offset:
        at = f"zoom {zoom}, offset {offset}" if offset else f"zoom {zoom}"
        raise DeepLabError(f"{path_npy}: scores {h}x{w} at {at} do not cover the image's {height}x{width} "
                           f"(it needs {rows_needed(height, zoom, offset)}x{rows_needed(width, zoom, offset)})")
    meta = {"height": int(height), "width": int(width), "zoom": int(zoom), "classes": int(c), "offset": int(offset)}
    write_bytes_atomic(sidecar_path(path_npy), (json.dumps(meta) + "\n").encode())
    with atomic_path(path_npy) as tmp:
        np.save(tmp, np.ascontiguousarray(scores, dtype=dtype))


def save_mat_scores(path, scores_chw: np.ndarray) -> None:
    """Write C x H x W scores as the fork's MAT_WRITE did: ``data`` is W x H x C x 1 (float32)."""
    import scipy.io

    blob = np.asarray(scores_chw, dtype=np.float32)
    if blob.ndim != 3:
        raise DeepLabError(f"{path}: scores must be C x H x W, got shape {blob.shape}")
    data = np.asfortranarray(blob.transpose(2, 1, 0)[..., None])  # data[w, h, c, 0] = blob[c, h, w]
    with atomic_path(path) as tmp:
        scipy.io.savemat(tmp, {"data": data}, do_compression=False)


def read_mat_scores(path) -> np.ndarray:
    """Read a MAT_WRITE file's ``data`` (W x H x C [x 1]) back as float32 C x H x W (uncropped)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise DeepLabError(f"score file {path} not found") from None
    except NotImplementedError:
        raise DeepLabError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save as v5") from None
    except Exception as e:  # scipy raises several types for corrupt files
        raise DeepLabError(f"cannot read score file {path}: {e}") from None
    if "data" not in mat:
        names = sorted(k for k in mat if not k.startswith("__"))
        raise DeepLabError(f"{path}: no variable 'data' (has {names})")
    data = np.asarray(mat["data"])
    _check_real(path, data.dtype)
    if data.ndim == 4:
        if data.shape[3] != 1:
            raise DeepLabError(f"{path}: 'data' holds {data.shape[3]} images; expected one (W x H x C x 1)")
        data = data[..., 0]
    if data.ndim != 3:
        raise DeepLabError(f"{path}: 'data' has shape {data.shape}; expected W x H x C")
    return np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32)


def _read_sidecar(path_json: str) -> dict:
    try:
        with open(path_json) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise DeepLabError(f"sidecar {path_json} not found (it records the image size of the .npy scores)") from None
    except (OSError, ValueError) as e:
        raise DeepLabError(f"cannot read sidecar {path_json}: {e}") from None
    try:
        out = {k: int(meta[k]) for k in ("height", "width", "zoom", "classes")}
        out["offset"] = int(meta.get("offset", 0))  # absent in files from before the key existed
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DeepLabError(f"{path_json}: expected integer height, width, zoom and classes "
                           f"(and optional offset), got {meta}") from None
    if out["zoom"] < 1 or out["offset"] < 0:
        raise DeepLabError(f"{path_json}: zoom must be >= 1 and offset >= 0, got {meta}")
    return out


def _check_real(path, dtype: np.dtype) -> None:
    """Scores are real floating-point numbers: strings, integers, complex values (whose
    imaginary part would be dropped) are an error naming the file."""
    if np.dtype(dtype).kind != "f":
        raise DeepLabError(f"score map {path} holds {np.dtype(dtype)} values; expected real floats "
                           f"(float16, float32 or float64)")


def score_classes(path) -> int | None:
    """The class count of a score map from its header alone (``.npy``: C of C x h x w; ``.mat``:
    C of MAT_WRITE's W x H x C), without reading the scores; None where the file cannot tell
    (missing, corrupt: loading it reports why)."""
    path = os.fspath(path)
    try:
        if path.endswith(".npy"):
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                shape = read(f)[0] if read else ()
            return int(shape[0]) if len(shape) == 3 else None
        if path.endswith(".mat"):
            import scipy.io

            shape = next((s for name, s, _ in scipy.io.whosmat(path) if name == "data"), ())
            return int(shape[2]) if len(shape) in (3, 4) else None
    except Exception:  # numpy and scipy raise several types for corrupt headers
        return None
    return None


def _check_finite(path, scores: np.ndarray) -> None:
    """NaN/Inf scores are an error naming the file (never silently all-background labels)."""
    bad = ~np.isfinite(scores)
    if bad.any():
        raise DeepLabError(f"score map {path} holds {int(bad.sum())} NaN/Inf value(s) (of {scores.size})")


def load_scores(path, image_hw: tuple[int, int] | None = None) -> ScoreMap:
    """Load a score map at full image resolution (float32 C x H x W).

    ``.npy`` (with its sidecar) is upsampled with the Interp alignment, shifted by the
    sidecar's ``offset`` and cropped to the recorded size; ``image_hw``, if given, must agree
    with it. ``.mat`` (MAT_WRITE layout) is cropped to ``image_hw``, which is required there.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        meta = _read_sidecar(sidecar_path(path))
        try:
            raw = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DeepLabError(f"score file {path} not found") from None
        except (OSError, ValueError, EOFError) as e:
            raise DeepLabError(f"cannot read score file {path}: {e}") from None
        _check_real(path, raw.dtype)
        if raw.ndim != 3 or raw.shape[0] != meta["classes"]:
            raise DeepLabError(f"{path}: shape {raw.shape} does not match its sidecar ({meta['classes']} classes, C x h x w)")
        height, width = meta["height"], meta["width"]
        if image_hw is not None and tuple(image_hw) != (height, width):
            raise DeepLabError(f"{path}: scores were extracted for a {height}x{width} image, "
                               f"but the image is {image_hw[0]}x{image_hw[1]}")
        need = (rows_needed(height, meta["zoom"], meta["offset"]), rows_needed(width, meta["zoom"], meta["offset"]))
        if raw.shape[1] > need[0] or raw.shape[2] > need[1]:
            at = f"zoom {meta['zoom']}" + (f", offset {meta['offset']}" if meta["offset"] else "")
            print(f"warning: score map {path} has {raw.shape[1]}x{raw.shape[2]} rows and columns, more than the "
                  f"{need[0]}x{need[1]} that cover its sidecar's {height}x{width} image ({at}): cropped to them "
                  f"(a map of another image, or a sidecar from another extraction?)", file=sys.stderr)
        _check_finite(path, raw)
        try:
            scores = upsample_scores(raw, meta["zoom"], height, width, meta["offset"])
        except USER_ERRORS as e:
            raise DeepLabError(f"{path}: {e}") from None
        return ScoreMap(scores, height, width)
    if ext == ".mat":
        if image_hw is None:
            raise DeepLabError(f"{path}: a .mat score map covers the padded crop; the image size is needed to crop it")
        data = read_mat_scores(path)
        height, width = int(image_hw[0]), int(image_hw[1])
        if data.shape[1] < height or data.shape[2] < width:
            raise DeepLabError(f"{path}: scores cover {data.shape[1]}x{data.shape[2]} pixels, "
                               f"smaller than the {height}x{width} image")
        kept = np.ascontiguousarray(data[:, :height, :width])
        _check_finite(path, kept)
        return ScoreMap(kept, height, width)
    raise DeepLabError(f"{path}: unknown score map format {ext!r} (expected .npy with a .json sidecar, or .mat)")
