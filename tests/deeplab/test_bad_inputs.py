"""Issue 15 items 9, 10, 12, 13, 14 and 16: the bad-input catalogue of the pipeline tools.

One table of (tool, what is wrong, expected fragment of the one-line message, exit status),
run by one parametrised test: no case may print a traceback (an unexpected exception fails
the test), leave a temporary or partial file, or pass silently. Then the output locations
that cannot be used (item 13) for every tool, and a full disk in the middle of a write
(item 14): the previous file stays as it was and the tool stops with one line.
"""
from __future__ import annotations

import errno
import io
import os
import pathlib

import cv2
import numpy as np
import pytest
from PIL import Image

import tinyset
from caffe import CaffeError
from caffe.util.images import read_image, read_label
from deeplab.cli import run_main
from deeplab.commands import crf_search, eval as eval_tool, extract, make_synthetic, netinfo, parse_log, report
from deeplab.labels import write_label
from deeplab.commands.densecrf import main as crf_main

MAINS = {"extract": extract.main, "densecrf": crf_main, "crf_search": crf_search.main, "eval": eval_tool.main,
         "report": report.main, "parse_log": parse_log.main, "netinfo": netinfo.main,
         "make_synthetic": make_synthetic.main}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    tinyset.make(root)
    tinyset.weights(root / "w.caffemodel")
    return root


@pytest.fixture
def tiny(base, tmp_path):
    """A fresh copy of the tiny set per case (cases damage it)."""
    import shutil

    root = tmp_path / "t"
    shutil.copytree(base, root)
    return root


def run(tool: str, argv: list[str], capsys, out: list | None = None) -> tuple[int, str]:
    """Run a tool as its console script does; (exit status, stderr); stdout is appended to ``out``."""
    try:
        run_main(MAINS[tool], argv)
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    if out is not None:
        out.append(captured.out)
    return code, captured.err


def jpeg(path: pathlib.Path, rgb: np.ndarray, mode: str = "RGB") -> None:
    Image.fromarray(rgb).convert(mode).save(path, "JPEG", quality=95)


def image_of(root, ident="im0") -> np.ndarray:
    return cv2.imread(str(root / "images" / f"{ident}.png"))[:, :, ::-1].copy()


# ---------------------------------------------------------------- the catalogue
# Each case: a function (root) -> (tool, argv) that damages the tiny set; fragment; exit status.
def ex(root, *extra, weights=None, model=None):
    argv = tinyset.extract_argv(root, weights or root / "w.caffemodel", root / "out", *extra)
    if model is not None:
        argv[argv.index("--model") + 1] = str(model)
    return "extract", argv


def proto(root, text, name="m.prototxt", binary=False):
    p = root / name
    p.write_bytes(text) if binary else p.write_text(text)
    return p


def model_weights(root, data: bytes):
    (root / "m.caffemodel").write_bytes(data)
    return root / "m.caffemodel"


def other_net(root):
    """A caffemodel for another net: the same layers under other names."""
    text = open(tinyset.PROTOTXT).read()
    for name in ("conv1", "conv2", "fc6"):
        text = text.replace(f'name: "{name}"', f'name: "x_{name}"')
    text = text.replace('name: "fc8_${EXP}"', 'name: "x_fc8"')
    p = proto(root, text, "other.prototxt")
    import torch

    from caffe.net import Net

    torch.manual_seed(0)
    Net(str(p), "TEST", mapping=tinyset.MAPPING).save(root / "other.caffemodel")
    return root / "other.caffemodel"


def nan_weights(root, extra_layer=False):
    import torch

    from caffe.net import Net

    text = open(tinyset.PROTOTXT).read()
    if extra_layer:
        text += 'layers { bottom: "fc6" top: "extra" name: "extra" type: CONVOLUTION convolution_param { num_output: 2 kernel_size: 1 } }\n'
    p = proto(root, text, "w.prototxt")
    torch.manual_seed(0)
    net = Net(str(p), "TEST", mapping=tinyset.MAPPING)
    if not extra_layer:
        net.layers[net.layer_names.index("conv2")].blobs[0].data.view(-1)[3] = float("nan")
    net.save(root / "bad.caffemodel")
    return root / "bad.caffemodel"


def shape_mismatch(root):
    import torch

    from caffe.net import Net

    p = proto(root, open(tinyset.PROTOTXT).read().replace("num_output: 5", "num_output: 7"), "wide.prototxt")
    torch.manual_seed(0)
    Net(str(p), "TEST", mapping=tinyset.MAPPING).save(root / "wide.caffemodel")
    return root / "wide.caffemodel"


def replace_image(root, write):
    write(root)
    (root / "images" / "im1.png").unlink()
    (root / "list.txt").write_text((root / "list.txt").read_text().replace("im1.png", "im1.jpg"))


def truncated_jpeg(root):
    buf = io.BytesIO()
    Image.fromarray(image_of(root, "im1")).save(buf, "JPEG", quality=95)
    (root / "images" / "im1.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])


def crf(root, *extra, scores=None):
    return "densecrf", tinyset.crf_argv(root, root / "out", *extra, scores=scores)


def search(root, *extra):
    return "crf_search", tinyset.search_argv(root, root / "out", *extra)


def ev(root, *extra, pred=None):
    return "eval", ["--pred", str(pred or root / "labels"), "--gt", str(root / "labels"), "--list",
                    str(root / "list.txt"), "--classes", str(root / "classes.txt"), "--trimap", "off", "--quiet",
                    *extra]


def label16(root, value=259):
    lab = read_label(root / "labels" / "im1.png").astype(np.uint16)
    lab[0, 0] = value
    cv2.imwrite(str(root / "labels" / "im1.png"), lab)  # a 16-bit grey PNG


def label_value(root, value):
    lab = read_label(root / "labels" / "im1.png")
    lab[0, 0] = value
    write_label(root / "labels" / "im1.png", lab)


def nan_scores(root, value=np.nan):
    raw = np.load(root / "scores" / "im1.npy")
    raw[1, 2, 3] = value
    np.save(root / "scores" / "im1.npy", raw)


def small_label(root):
    write_label(root / "labels" / "im1.png", np.zeros((20, 20), np.uint8))


def crlf_list(root):
    (root / "list.txt").write_bytes((root / "list.txt").read_text().replace("\n", "\r\n").encode())


def spaced_list(root):
    (root / "list.txt").write_text("/images/im0.png /labels/im0.png\n/images/im 1.png /labels/im1.png\n")


def empty_list(root):
    (root / "list.txt").write_text("# nothing here\n\n")


def score_file(root, raw, ident="im1", classes=None):
    """Replace ``ident``'s score map by ``raw`` (its sidecar's class count follows, or ``classes``)."""
    import json

    np.save(root / "scores" / f"{ident}.npy", raw)
    meta = json.loads((root / "scores" / f"{ident}.json").read_text())
    meta["classes"] = classes or int(raw.shape[0])
    (root / "scores" / f"{ident}.json").write_text(json.dumps(meta))


def other_dtype(root, dtype):
    raw = np.load(root / "scores" / "im1.npy")
    score_file(root, raw.astype(dtype))


def more_classes(root):
    raw = np.load(root / "scores" / "im1.npy")
    score_file(root, np.concatenate([raw, raw[:1]]))


def larger_map(root):
    raw = np.load(root / "scores" / "im1.npy")
    score_file(root, np.concatenate([raw, raw[:, -1:]], axis=1))  # one row more than 40 pixels need


def loop(path):
    """``path`` becomes a symbolic link loop."""
    path = pathlib.Path(path)
    if path.exists():
        path.unlink()
    os.symlink(path.name + ".other", path)
    os.symlink(path.name, path.parent / (path.name + ".other"))
    return path


_HELD: list = []  # folders a case holds as another run would (released after the case)


def held(root, inputs):
    from deeplab.provenance import open_output

    _HELD.append(open_output(root / "out", "densecrf", inputs, quiet=True))


def changed_after_extraction(root):
    """Score maps extracted into feats, then im1.png replaced by another picture of its size."""
    from deeplab.commands import extract as extract_tool

    assert extract_tool.main(tinyset.extract_argv(root, root / "w.caffemodel", root / "feats")) == 0
    path = root / "images" / "im1.png"
    before = os.stat(path).st_mtime_ns
    cv2.imwrite(str(path), image_of(root, "im2")[::-1, :, ::-1])
    os.utime(path, ns=(before, before + 10 ** 9))


def net_case(root, layer='name: "r" type: "ReLU" bottom: "data" top: "r"', dims="dim: 1 dim: 3 dim: 8 dim: 8"):
    """netinfo on a net of one Input (``dims``) and one layer."""
    return "netinfo", [str(proto(root, f'input: "data"\ninput_shape {{ {dims} }}\nlayer {{ {layer} }}\n'))]


def do(setup, make):
    """A case whose damage ``setup(root)`` precedes the command ``make(root)``."""
    def case(root):
        setup(root)
        return make(root)
    return case


CASES = {
    # extract: the net and its weights
    "extract/malformed prototxt": (lambda r: ex(r, model=proto(r, 'layer { name: "x" type: \n')), "m.prototxt:2:1", 2),
    "extract/binary prototxt": (lambda r: ex(r, model=proto(r, b"\x00\x01\xff\xfe", binary=True)), "cannot read", 2),
    "extract/unknown field": (lambda r: ex(r, model=proto(r, 'layer { name: "x" type: "ReLU" bogus: 1 }\n')),
                              'no field named "bogus"', 2),
    "extract/unknown V1 layer type": (lambda r: ex(r, model=proto(r, open(tinyset.PROTOTXT).read().replace(
        "type: RELU }", "type: BOGUS }", 1))), "has no value named BOGUS", 2),
    "netinfo/unknown layer type": (lambda r: ("netinfo", [str(proto(r, 'input: "data"\ninput_shape { dim: 1 dim: 3 '
                                                                        'dim: 8 dim: 8 }\nlayer { name: "x" type: '
                                                                        '"Bogus" bottom: "data" top: "y" }\n'))]),
                                   "needs 1 layer type(s) this engine lacks: Bogus (1 layer: x)", 2),
    "extract/empty prototxt": (lambda r: ex(r, model=proto(r, "")), "defines no layers", 2),
    "extract/shape mismatch": (lambda r: ex(r, weights=shape_mismatch(r)), "layer 'conv2': blob 0 has shape", 2),
    "extract/empty caffemodel": (lambda r: ex(r, weights=model_weights(r, b"")), "holds no layers", 2),
    "extract/truncated caffemodel": (lambda r: ex(r, weights=model_weights(
        r, (r / "w.caffemodel").read_bytes()[:500])), "truncated or corrupt caffemodel", 2),
    "extract/corrupt caffemodel": (lambda r: ex(r, weights=model_weights(r, b"\x0f" * 300)),
                                   "truncated or corrupt caffemodel", 2),
    "extract/caffemodel of another net": (lambda r: ex(r, weights=other_net(r)), "none of its 4 layer(s) matches", 2),
    "extract/NaN weights": (lambda r: ex(r, weights=nan_weights(r)), "layer 'conv2' blob 0 holds 1 NaN/Inf", 2),
    "extract/extra layer, --strict": (lambda r: ex(r, "--strict", weights=nan_weights(r, True)),
                                      "--strict: ", 2),
    "extract/extra layer warns": (lambda r: ex(r, weights=nan_weights(r, True)), "warning: ", 0),
    # extract: images and lists
    "extract/missing image": (do(lambda r: (r / "images" / "im1.png").unlink(), ex), "list.txt:2 (id im1): image", 2),
    "extract/zero-byte image": (do(lambda r: (r / "images" / "im1.png").write_bytes(b""), ex), "(empty file)", 2),
    "extract/truncated JPEG": (do(lambda r: replace_image(r, truncated_jpeg), ex), "im1.jpg is truncated", 2),
    "extract/CMYK JPEG": (do(lambda r: replace_image(r, lambda r: jpeg(r / "images" / "im1.jpg", image_of(r, "im1"),
                                                                       "CMYK")), ex), "4 written", 0),
    "extract/grayscale image": (do(lambda r: cv2.imwrite(str(r / "images" / "im1.png"),
                                                         image_of(r, "im1")[:, :, 0]), ex), "4 written", 0),
    "extract/16-bit image": (do(lambda r: cv2.imwrite(str(r / "images" / "im1.png"),
                                                      image_of(r, "im1").astype(np.uint16) * 257), ex), "4 written", 0),
    "extract/CRLF list": (do(crlf_list, ex), "4 written", 0),
    "extract/id with a space": (do(spaced_list, ex), "list.txt:2: expected 'image [label]', got 3 columns", 2),
    "extract/empty list": (do(empty_list, ex), "lists no images", 2),
    "extract/unknown flag": (lambda r: ex(r, "--bogus"), "unrecognized arguments: --bogus", 2),
    # densecrf
    "densecrf/NaN scores": (do(nan_scores, crf), "im1: score map", 1),
    "densecrf/Inf scores": (do(lambda r: nan_scores(r, np.inf), crf), "holds 1 NaN/Inf value(s)", 1),
    "densecrf/image and scores of other sizes": (do(lambda r: cv2.imwrite(str(r / "images" / "im1.png"),
                                                                          np.zeros((30, 30, 3), np.uint8)), crf),
                                                 "scores were extracted for a 40x56 image, but the image is 30x30", 1),
    "densecrf/CRLF list": (do(crlf_list, crf), "4 refined", 0),
    "densecrf/empty list": (do(empty_list, crf), "lists no images", 2),
    "densecrf/unknown flag": (lambda r: crf(r, "--bogus"), "unrecognized arguments", 2),
    # crf_search
    "crf_search/NaN scores": (do(nan_scores, search), "id im1: score map", 2),
    "crf_search/label value >= classes": (do(lambda r: label_value(r, 7), search),
                                          "holds value(s) 7: neither a class (0..2) nor the ignore value 255", 2),
    "crf_search/16-bit label": (do(label16, search), "holds value(s) 259", 2),
    "crf_search/label and image of other sizes": (do(small_label, search), "id im1: ground truth is 20x20", 2),
    "crf_search/empty list": (do(empty_list, search), "lists no images", 2),
    # issue 24: non-finite CRF parameters, score maps of other types or class counts, loops
    "densecrf/--bi-w inf": (lambda r: crf(r, "--bi-w", "inf"), "bi_w must be a finite number >= 0, got inf", 2),
    "densecrf/--pos-w 1e309": (lambda r: crf(r, "--pos-w", "1e309"), "pos_w must be a finite number >= 0", 2),
    "densecrf/--bi-xy-std nan": (lambda r: crf(r, "--bi-xy-std", "nan"), "bi_xy_std must be a finite number > 0", 2),
    "crf_search/--bi-w inf": (lambda r: search(r, "--bi-w", "3,inf"), "grid '3,inf': 'inf': not a finite number", 2),
    "crf_search/--pos-w 1e309": (lambda r: search(r, "--pos-w", "1e309"), "pos_w must be a finite number >= 0", 2),
    "densecrf/string scores": (do(lambda r: other_dtype(r, "U4"), crf), "im1.npy holds <U4 values; expected real", 1),
    "densecrf/complex scores": (do(lambda r: other_dtype(r, np.complex64), crf), "holds complex64 values", 1),
    "crf_search/string scores": (do(lambda r: other_dtype(r, "U4"), search), "im1.npy holds <U4 values", 2),
    "crf_search/complex scores": (do(lambda r: other_dtype(r, np.complex128), search), "holds complex128 values", 2),
    "densecrf/class counts differ": (do(more_classes, crf), "im1.npy has 4 classes, ", 2),
    "crf_search/class counts differ": (do(more_classes, search),
                                       "im1.npy has 4 classes, the dataset description (--classes) has 3", 2),
    "densecrf/class count not --classes": (do(more_classes, lambda r: crf(r, "--classes", str(r / "classes.txt"))),
                                           "im1.npy has 4 classes, the class list", 2),
    "densecrf/score map larger than its sidecar": (do(larger_map, crf), "has 7x8 rows and columns, more than the "
                                                                         "6x8 that cover", 0),
    "densecrf/image changed since the extraction": (do(changed_after_extraction,
                                                       lambda r: crf(r, scores=r / "feats")),
                                                    "was made from an earlier version of", 1),
    "densecrf/image is a symbolic link loop": (do(lambda r: loop(r / "images" / "im1.png"), crf),
                                               "im1.png is (or goes through) a symbolic link loop", 1),
    "densecrf/--images is a symbolic link loop": (lambda r: crf(r, "--images", str(loop(r / "imgs"))),
                                                  "imgs is (or goes through) a symbolic link loop", 2),
    "extract/--model is a symbolic link loop": (lambda r: ex(r, model=loop(r / "m.prototxt")),
                                                "m.prototxt is (or goes through) a symbolic link loop", 2),
    "densecrf/--out held by a run with other inputs": (do(lambda r: held(r, {"params": "other"}), crf),
                                                       "is in use by another run with other inputs", 2),
    "netinfo/layer error carries file:line": (lambda r: ("netinfo", [str(proto(r, 'input: "data"\ninput_shape { dim: '
                                                                          '1 dim: 3 dim: 8 dim: 8 }\nlayer { name: '
                                                                          '"c" type: "Convolution" bottom: "data" top: '
                                                                          '"c"\n convolution_param { num_output: 2 '
                                                                          'kernel_size: 20 } }\n'))]),
                                              "m.prototxt:3: layer 'c' (Convolution): input 8x8 is smaller", 2),
    # eval
    "eval/16-bit label": (do(label16, ev), "im1.png holds value(s) 259", 2),
    "eval/16-bit label of a class": (do(lambda r: label16(r, 2), ev), "mean IoU", 0),
    "eval/label value >= classes": (do(lambda r: label_value(r, 3), ev), "holds value(s) 3: neither a class", 2),
    "eval/prediction of another size": (do(small_label, lambda r: ev(r, pred=r / "scores")), "prediction", 2),
    "eval/empty list": (do(empty_list, ev), "lists no images", 2),
    "eval/unknown flag": (lambda r: ev(r, "--bogus"), "unrecognized arguments", 2),
    # the others
    # issue 24 items 3 and 8: an axis out of range, a non-positive shape (netinfo printed 1x0x-3x8)
    "netinfo/Softmax axis 5": (lambda r: net_case(r, 'name: "p" type: "Softmax" bottom: "data" top: "p" '
                                                     'softmax_param { axis: 5 }'),
                               "layer 'p' (Softmax): axis 5 out of range for a 4-D blob", 2),
    "netinfo/Crop axis 5": (lambda r: net_case(r, 'name: "c" type: "Crop" bottom: "data" bottom: "data" top: "c" '
                                                  'crop_param { axis: 5 }'),
                            "layer 'c' (Crop): axis 5 out of range", 2),
    "netinfo/Input dim 0": (lambda r: net_case(r, dims="dim: 1 dim: 0 dim: 8 dim: 8"),
                            "top 'data' would have shape 1x0x8x8; every dimension must be positive", 2),
    "netinfo/Input dim -3": (lambda r: net_case(r, dims="dim: 1 dim: 3 dim: -3 dim: 8"),
                             "would have shape 1x3x-3x8", 2),
    "netinfo/Padding below zero": (lambda r: net_case(r, 'name: "pad" type: "Padding" bottom: "data" top: "p" '
                                                         'padding_param { pad_beg: -9 }'),
                                   "layer 'pad' (Padding): top 'p' would have shape 1x3x-1x-1", 2),
    "netinfo/empty prototxt": (lambda r: ("netinfo", [str(proto(r, ""))]), "defines no layers", 2),
    "netinfo/binary prototxt": (lambda r: ("netinfo", [str(proto(r, b"\xff\xfe\x00", binary=True))]),
                                "cannot read", 2),
    "parse_log/empty log": (lambda r: ("parse_log", [str(proto(r, "", "train.log"))]), "no Caffe training lines", 2),
    "report/16-bit label": (do(label16, lambda r: ("report", [str(r), "--gt", str(r / "labels"), "--list",
                                                              str(r / "list.txt"), "--classes",
                                                              str(r / "classes.txt")])), None, 0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_catalogue(name, tiny, capfd):
    """(capfd: densecrf's workers are processes; what they print is on file descriptor 2.)"""
    make, fragment, status = CASES[name]
    try:
        tool, argv = make(tiny)
        out: list[str] = []
        code, err = run(tool, argv, capfd, out)
    finally:
        while _HELD:
            _HELD.pop().close()
    assert code == status, err
    assert "Traceback" not in err
    if fragment:
        assert fragment in err or fragment in out[0], err
    if status == 2:  # one line "error: ..." (argparse: its usage, then "prog: error: ...")
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") or (last.split(": ")[1:2] == ["error"] and "usage:" in err), err
    for folder, _, names in os.walk(tiny):
        assert not [n for n in names if ".tmp" in n], (folder, names)


def test_report_16bit_gt_is_refused(tiny, capsys):
    """The report reads ground truth at its real depth too (it ranks examples against it)."""
    (tiny / "res" / "val" / "dcnn").mkdir(parents=True)
    for i in ("im0", "im1"):
        write_label(tiny / "res" / "val" / "dcnn" / f"{i}.png", read_label(tiny / "labels" / f"{i}.png") % 255 % 3)
    label16(tiny)
    code, err = run("report", [str(tiny), "--gt", str(tiny / "labels"), "--list", str(tiny / "list.txt"),
                               "--classes", str(tiny / "classes.txt")], capsys)
    assert code == 2 and "im1.png holds value(s) 259" in err


# ---------------------------------------------------------------- items 10 and 12 by hand
def test_read_label_keeps_16_bit_values(tmp_path):
    lab = np.array([[0, 1], [255, 259]], np.uint16)
    cv2.imwrite(str(tmp_path / "l.png"), lab)
    got = read_label(tmp_path / "l.png")
    assert got.dtype == np.uint16 and got.tolist() == [[0, 1], [255, 259]]  # 259 is not class 3
    with pytest.raises(CaffeError, match=r"l.png holds value\(s\) 259: neither a class \(0..20\) nor the ignore"):
        read_label(tmp_path / "l.png", 21, 255)
    cv2.imwrite(str(tmp_path / "ok.png"), lab[:1])
    assert read_label(tmp_path / "ok.png", 21, 255).dtype == np.uint8


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    (tmp_path / "whole.jpg").write_bytes(buf.getvalue() + b"\0\0")  # padding after the end marker is fine
    assert read_image(tmp_path / "whole.jpg").shape == (48, 64, 3)
    (tmp_path / "junk.jpg").write_bytes(buf.getvalue() + b"trailing junk")  # so is junk, as libjpeg reads it
    assert read_image(tmp_path / "junk.jpg").shape == (48, 64, 3)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:-40])
    with pytest.raises(CaffeError, match=r"cut.jpg is truncated"):
        read_image(tmp_path / "cut.jpg")


# ---------------------------------------------------------------- item 13: unusable output locations
def _out_cases(root):
    """tool -> argv with the output location OUT (a placeholder to substitute)."""
    return {
        "extract": tinyset.extract_argv(root, root / "w.caffemodel", pathlib.Path("OUT")),
        "densecrf": tinyset.crf_argv(root, pathlib.Path("OUT")),
        "crf_search": tinyset.search_argv(root, pathlib.Path("OUT")),
        "eval": ev(root, "--json", "OUT/e.json")[1],
        "eval --plot": ev(root, "--plot", "OUT/t.png")[1],
        "parse_log": [str(root / "train.log"), "--csv", "OUT/x.csv"],
        "report": [str(root), "-o", "OUT/r.html"],
        "make_synthetic": ["--out", "OUT", "--count", "2", "--size", "16"],
    }


@pytest.mark.parametrize("kind", ["below a file", "read-only", "cannot create"])
@pytest.mark.parametrize("tool", ["extract", "densecrf", "crf_search", "eval", "eval --plot", "parse_log", "report",
                                  "make_synthetic"])
def test_unusable_output_location_is_one_line(tool, kind, base, tmp_path, capsys):
    (tmp_path / "file").write_text("a regular file")
    if kind == "below a file":
        out, why = tmp_path / "file" / "sub", "is below the regular file"
    elif kind == "read-only":
        if os.geteuid() == 0:  # root writes anywhere it may: use a folder no one can write to
            if not os.path.isdir("/sys/kernel"):
                pytest.skip("needs /sys")
            out = pathlib.Path("/sys/kernel")
        else:
            out = tmp_path / "ro"
            out.mkdir()
            out.chmod(0o555)
        why = "is not writable"
    else:
        if not os.path.isdir("/sys/kernel"):
            pytest.skip("needs /sys")
        out, why = pathlib.Path("/sys/kernel/deeplab-test/out"), "cannot create it"
    argv = [a.replace("OUT", str(out)) for a in map(str, _out_cases(base)[tool])]
    (base / "train.log").write_text("I0101 00:00:01.000000  1 solver.cpp:228] Iteration 0, loss = 1.5\n"
                                    "I0101 00:00:02.000000  1 solver.cpp:228] Iteration 20, loss = 1.2\n")
    code, err = run(tool.split()[0], argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], err
    assert str(out) in lines[0]


# ---------------------------------------------------------------- item 14: disk full mid-write
class _FullFile(io.FileIO):
    """A file on a full disk: half of the first write lands, then ENOSPC."""

    def write(self, data):
        super().write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def _full_open(path, mode="r", *a, **k):
    if "w" in mode and ".tmp" in os.path.basename(str(path)):
        return _FullFile(path, "w")
    return open(path, mode, *a, **k)


def _check_full(code, err, before: dict, folder):
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: cannot write ") and "no space left on device" in lines[-1], err
    assert "Traceback" not in err
    assert tinyset.outputs(folder) == before  # the previous files as they were, no temporary left


def test_disk_full_extract_keeps_previous_score_map(tiny, capsys, monkeypatch):
    kind, argv = ex(tiny)
    assert run(kind, argv, capsys)[0] == 0
    before = tinyset.outputs(tiny / "out")

    def full_save(file, arr, *a, **k):
        with _FullFile(file, "w") as f:
            f.write(b"\x93NUMPY" + bytes(100))

    monkeypatch.setattr(np, "save", full_save)
    _check_full(*run(kind, argv + ["--force"], capsys), before, tiny / "out")


def test_disk_full_densecrf_stops_and_keeps_previous_png(tiny, capsys, monkeypatch):
    kind, argv = crf(tiny)
    assert run(kind, argv, capsys)[0] == 0
    before = tinyset.outputs(tiny / "out")

    def full_save(self, fp, *a, **k):
        with _FullFile(fp, "w") as f:
            f.write(b"\x89PNG" + bytes(100))

    monkeypatch.setattr(Image.Image, "save", full_save)
    code, err = run(kind, argv + ["--force"], capsys)
    _check_full(code, err, before, tiny / "out")
    assert "refined" not in err  # stopped at the first image, not 4 failures


def test_disk_full_search_csv_and_eval_json(tiny, capsys, monkeypatch):
    import caffe.util.files

    kind, argv = search(tiny)
    assert run(kind, argv, capsys)[0] == 0
    kind, eargv = ev(tiny, "--json", str(tiny / "out" / "e.json"))
    assert run(kind, eargv, capsys)[0] == 0
    before = tinyset.outputs(tiny / "out")
    monkeypatch.setattr(caffe.util.files, "open", _full_open, raising=False)
    _check_full(*run(kind, eargv, capsys), before, tiny / "out")
    _check_full(*run("crf_search", tinyset.search_argv(tiny, tiny / "out")[:-1] + ["--bi-xy-std", "20,40,60", "--quiet"], capsys), before, tiny / "out")
