"""Compact packs for moving an experiment to a machine that can only receive a few files.

A GPU machine lent for minutes takes at most a few dozen MiB with the working tree and gives
back a few files of 16 MiB: this module packs what a recipe needs there and what it brings back.

- ``pack_dataset``: the images and labels of some list files in one ``.npz`` (images re-encoded
  as JPEG of a given quality, labels as the original lossless PNG bytes, plus each list's lines)
  and ``unpack_dataset`` to write them back as a dataset folder with release-style lists;
- ``pack_weights`` / ``unpack_weights``: chosen layers of a caffemodel as float16 and back;
- ``pack_folder`` / ``unpack_archives``: a folder's files into tar archives of at most a given
  size each, and back.

JPEG re-encoding is lossy (quality 85 changes pixel values by a few levels); labels are exact.
"""
from __future__ import annotations

import os
import re
import tarfile

import cv2
import numpy as np

from caffe.util.files import atomic_path
from caffe.util.images import read_image
from caffe.util.lists import read_list
from caffe.model_io import LayerBlobs, load_caffemodel, save_caffemodel

from .. import DeepLabError

IMAGES, LABELS = "images", "labels"


def _encode_jpeg(path: str, quality: int) -> bytes:
    # Huffman tables optimised for the image: lossless, about 2 % fewer bytes
    ok, data = cv2.imencode(".jpg", read_image(path), [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    if not ok:
        raise DeepLabError(f"{path}: could not encode as JPEG")
    return data.tobytes()


def _concat(chunks: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
    return np.frombuffer(b"".join(chunks), np.uint8), offsets


def _chunks(data: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    return [data[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])]


def pack_dataset(root: str, list_dir: str, sets: list[str], out: str, quality: int = 80,
                 progress: bool = True) -> dict[str, int]:
    """Pack the images (as JPEG) and labels (PNG bytes) of ``list_dir/<set>.txt`` for each set into
    ``out`` (.npz); an image in several lists is stored once. Returns images per set."""
    from tqdm import tqdm
    if not 1 <= quality <= 100:
        raise DeepLabError(f"JPEG quality must be 1..100, got {quality}")
    arrays: dict[str, np.ndarray] = {}
    images: dict[str, bytes] = {}
    labels: dict[str, bytes] = {}
    counts = {}
    for name in sets:
        lines = read_list(os.path.join(list_dir, f"{name}.txt"))
        ids = []
        for line in tqdm(lines, desc=f"pack {name}", disable=not progress):
            image_id = os.path.splitext(os.path.basename(line.image))[0]
            ids.append(image_id)
            if image_id not in images:
                images[image_id] = _encode_jpeg(os.path.join(root, line.image.lstrip("/")), quality)
            if line.label is not None and image_id not in labels:
                with open(os.path.join(root, line.label.lstrip("/")), "rb") as f:
                    labels[image_id] = f.read()
        has_labels = np.array([line.label is not None for line in lines])
        if has_labels.any() and not has_labels.all():
            raise DeepLabError(f"{list_dir}/{name}.txt: some lines have a label and some do not")
        arrays[f"list_{name}"] = np.array(ids)
        arrays[f"labelled_{name}"] = np.array(bool(has_labels.all()))
        counts[name] = len(ids)
    order = sorted(images)
    arrays["ids"] = np.array(order)
    arrays["images"], arrays["image_offsets"] = _concat([images[i] for i in order])
    arrays["label_ids"] = np.array(sorted(labels))
    arrays["labels"], arrays["label_offsets"] = _concat([labels[i] for i in sorted(labels)])
    arrays["quality"] = np.array(quality)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return counts


def unpack_dataset(pack: str, dest: str) -> dict[str, int]:
    """Write a pack as ``dest/images/<id>.jpg``, ``dest/labels/<id>.png`` and ``dest/list/<set>.txt``
    (release-style lines ``/images/x.jpg /labels/x.png``) plus ``<set>_id.txt``; images per set."""
    with np.load(pack, allow_pickle=False) as z:
        for sub in (IMAGES, LABELS, "list"):
            os.makedirs(os.path.join(dest, sub), exist_ok=True)
        for key, data, offsets, ext in ((("ids", "images", "image_offsets", ".jpg")),
                                        (("label_ids", "labels", "label_offsets", ".png"))):
            folder = IMAGES if ext == ".jpg" else LABELS
            for image_id, blob in zip(z[key], _chunks(z[data], z[offsets])):
                with open(os.path.join(dest, folder, f"{image_id}{ext}"), "wb") as f:
                    f.write(blob)
        counts = {}
        for key in z.files:
            if not key.startswith("list_"):
                continue
            name, ids = key[len("list_"):], [str(i) for i in z[key]]
            labelled = bool(z[f"labelled_{name}"])
            with open(os.path.join(dest, "list", f"{name}.txt"), "w") as f:
                f.writelines(f"/{IMAGES}/{i}.jpg" + (f" /{LABELS}/{i}.png" if labelled else "") + "\n" for i in ids)
            with open(os.path.join(dest, "list", f"{name}_id.txt"), "w") as f:
                f.writelines(f"{i}\n" for i in ids)
            counts[name] = len(ids)
    return counts


def pack_weights(caffemodel: str, out: str, layers: str = ".*") -> list[str]:
    """Store the layers of ``caffemodel`` whose names match the regular expression ``layers`` as
    float16 in ``out`` (.npz); returns their names. Float16 keeps about 3 significant digits."""
    keep = re.compile(layers)
    chosen = [layer for layer in load_caffemodel(caffemodel) if keep.fullmatch(layer.name) and layer.blobs]
    if not chosen:
        raise DeepLabError(f"{caffemodel}: no layer with learnable blobs matches {layers!r}")
    return save_float16(chosen, out, caffemodel)


def save_float16(layers: list[LayerBlobs], out: str, source: str = "weights") -> list[str]:
    """Store ``layers`` (LayerBlobs with blobs) as float16 in ``out`` (.npz, deflated), in order;
    returns their names. Each blob's high and low bytes are stored apart (the high bytes, sign and
    exponent, deflate well; the same lossless float16 in about 85 % of the bytes). A value
    beyond float16's range is an error naming ``source``."""
    arrays = {}
    for layer in layers:
        arrays[f"type/{layer.name}"] = np.array(layer.type)
        for i, blob in enumerate(layer.blobs):
            if np.abs(blob).max(initial=0) > np.finfo(np.float16).max:
                raise DeepLabError(f"{source}: layer {layer.name} blob {i} exceeds float16's range")
            half = np.ascontiguousarray(blob, dtype="<f2")
            pairs = half.view(np.uint8).reshape(-1, 2)
            arrays[f"shape/{layer.name}/{i}"] = np.array(half.shape, np.int64)
            arrays[f"low/{layer.name}/{i}"] = np.ascontiguousarray(pairs[:, 0])
            arrays[f"high/{layer.name}/{i}"] = np.ascontiguousarray(pairs[:, 1])
    arrays["order"] = np.array([layer.name for layer in layers])
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return [layer.name for layer in layers]


def _float16_blob(z, name: str, i: int) -> np.ndarray:
    """Blob ``i`` of layer ``name`` from a ``save_float16`` file, as float32 (older plain float16 too)."""
    if f"blob/{name}/{i}" in z.files:
        return z[f"blob/{name}/{i}"].astype(np.float32)
    pairs = np.stack([z[f"low/{name}/{i}"], z[f"high/{name}/{i}"]], axis=1)
    return pairs.view("<f2").reshape(tuple(z[f"shape/{name}/{i}"])).astype(np.float32)


def unpack_weights(packed: list[str], caffemodel: str) -> list[str]:
    """Write the layers of ``pack_weights`` files, in the order given, as one (float32) caffemodel;
    returns the layer names."""
    layers = []
    for path in packed:
        with np.load(path, allow_pickle=False) as z:
            for name in (str(n) for n in z["order"]):
                count = sum(1 for k in z.files if k.startswith((f"blob/{name}/", f"shape/{name}/")))
                layers.append(LayerBlobs(name, str(z[f"type/{name}"]),
                                         [_float16_blob(z, name, i) for i in range(count)]))
    save_caffemodel(caffemodel, layers)
    return [layer.name for layer in layers]


def pack_folder(folder: str, out_prefix: str, max_bytes: int = 15 << 20, max_total: int | None = None,
                omitted: list | None = None) -> list[str]:
    """Put the files under ``folder`` (recursively, sorted) into ``out_prefix.<k>.tar`` archives of
    at most ``max_bytes`` each (a single larger file is an error); returns the archive paths.
    ``max_total``: the archives' bytes together; files past it (the last in sorted order) are
    left out and their relative paths appended to ``omitted``."""
    files = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
    if not files:
        raise DeepLabError(f"{folder}: nothing to pack")
    if max_total is not None:
        kept, total, full = [], 0, False
        for rel in files:
            n = os.path.getsize(os.path.join(folder, rel)) + 1024   # tar header and padding
            archives = (total + n) // max_bytes + 2                 # each ends with 10 KiB of blocks
            full = full or total + n + archives * 10 * 1024 > max_total
            if full:
                if omitted is not None:
                    omitted.append(rel)
                continue
            kept.append(rel)
            total += n
        if not kept:
            raise DeepLabError(f"{folder}: not even its first file fits {max_total} bytes")
        files = kept
    groups: list[list[str]] = [[]]
    size = 0
    for rel in files:
        n = os.path.getsize(os.path.join(folder, rel)) + 1024  # tar header and padding
        if n > max_bytes:
            raise DeepLabError(f"{os.path.join(folder, rel)}: {n} bytes, more than an archive may hold ({max_bytes})")
        if size + n > max_bytes - 1024 * 10:  # the end-of-archive blocks
            groups.append([])
            size = 0
        groups[-1].append(rel)
        size += n
    paths = []
    for k, group in enumerate(groups):
        path = f"{out_prefix}.{k}.tar"
        with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
            for rel in group:
                tar.add(os.path.join(folder, rel), arcname=rel, recursive=False)
        paths.append(path)
    return paths


def unpack_archives(archives: list[str], dest: str) -> int:
    """Extract ``pack_folder`` archives into ``dest`` (plain files only, no paths leaving it)."""
    count = 0
    for path in archives:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            for m in members:
                if not m.isfile() or m.name.startswith("/") or ".." in m.name.split("/"):
                    raise DeepLabError(f"{path}: member {m.name!r} is not a plain relative file")
            tar.extractall(dest, members=members, filter="data")
            count += len(members)
    return count

