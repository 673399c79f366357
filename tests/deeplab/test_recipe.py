"""deeplab.recipe.pack and deeplab.recipe.run: the packs that travel to a lent GPU machine and back, and the
recipe's whole run (train, float16 weights, extraction, archives) as a CPU dry run."""
from __future__ import annotations

import json
import os
import time
import pathlib
import tarfile

import numpy as np
import pytest

import tinyset
from conftest import REPO
from deeplab import USER_ERRORS
from deeplab.recipe.pack import pack_dataset, pack_folder, pack_weights, unpack_archives, unpack_dataset, unpack_weights


def lists(root: pathlib.Path, ids: list[str]) -> pathlib.Path:
    """train/val with labels, test without (as CamVid's blind split)."""
    d = root / "list"
    d.mkdir()
    (d / "train.txt").write_text("".join(f"/images/{i}.png /labels/{i}.png\n" for i in ids[:3]))
    (d / "val.txt").write_text("".join(f"/images/{i}.png /labels/{i}.png\n" for i in ids[2:]))
    (d / "test.txt").write_text("".join(f"/images/{i}.png\n" for i in ids[1:3]))
    return d


def test_dataset_pack_round_trip(tmp_path):
    root = tmp_path / "data"
    ids = tinyset.make(root)
    counts = pack_dataset(str(root), str(lists(root, ids)), ["train", "val", "test"], str(tmp_path / "p.npz"),
                          quality=95, progress=False)
    assert counts == {"train": 3, "val": 2, "test": 2}
    out = tmp_path / "out"
    assert unpack_dataset(str(tmp_path / "p.npz"), str(out)) == counts
    assert (out / "list" / "test.txt").read_text() == f"/images/{ids[1]}.jpg\n/images/{ids[2]}.jpg\n"
    assert (out / "list" / "val_id.txt").read_text() == f"{ids[2]}\n{ids[3]}\n"
    assert (out / "list" / "train.txt").read_text().splitlines()[0] == f"/images/{ids[0]}.jpg /labels/{ids[0]}.png"
    import cv2
    for i in ids:
        assert (out / "labels" / f"{i}.png").read_bytes() == (root / "labels" / f"{i}.png").read_bytes()
        a = cv2.imread(str(out / "images" / f"{i}.jpg")).astype(float)
        b = cv2.imread(str(root / "images" / f"{i}.png")).astype(float)
        assert a.shape == b.shape and np.abs(a - b).mean() < 8  # JPEG at quality 95 of noisy images


def test_dataset_pack_refuses_mixed_labelling(tmp_path):
    root = tmp_path / "data"
    ids = tinyset.make(root)
    (root / "mixed.txt").write_text(f"/images/{ids[0]}.png /labels/{ids[0]}.png\n/images/{ids[1]}.png\n")
    with pytest.raises(USER_ERRORS, match="mixed.txt: some lines have a label"):
        pack_dataset(str(root), str(root), ["mixed"], str(tmp_path / "p.npz"), progress=False)
    assert not (tmp_path / "p.npz").exists()


def test_weights_pack_is_float16_of_the_chosen_layers(tmp_path):
    from caffe.model_io import load_caffemodel
    w = tinyset.weights(tmp_path / "w.caffemodel")
    layers = load_caffemodel(w)
    first = layers[0].name
    assert pack_weights(str(w), str(tmp_path / "a.npz"), layers=f"{first}") == [first]
    rest = pack_weights(str(w), str(tmp_path / "b.npz"), layers=f"(?!{first}$).*")
    assert first not in rest and len(rest) == len([layer for layer in layers if layer.blobs]) - 1
    unpack_weights([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")], str(tmp_path / "back.caffemodel"))
    back = load_caffemodel(tmp_path / "back.caffemodel")
    assert [layer.name for layer in back] == [layer.name for layer in layers if layer.blobs]
    for ours, theirs in zip(back, [layer for layer in layers if layer.blobs]):
        assert ours.type == theirs.type
        for a, b in zip(ours.blobs, theirs.blobs):
            assert a.dtype == np.float32 and np.array_equal(a, b.astype(np.float16).astype(np.float32))
    with pytest.raises(USER_ERRORS, match="no layer with learnable blobs matches 'nothing'"):
        pack_weights(str(w), str(tmp_path / "c.npz"), layers="nothing")


def test_folder_archives_stay_under_the_limit_and_unpack(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {f"a/b/f{k}.bin": rng.bytes(30_000) for k in range(7)} | {"top.txt": b"hello"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    archives = pack_folder(str(src), str(tmp_path / "out" / "r"), max_bytes=80_000)
    assert len(archives) >= 3 and all(os.path.getsize(a) <= 80_000 for a in archives)
    dest = tmp_path / "dest"
    assert unpack_archives(archives, str(dest)) == len(files)
    assert {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == files
    with pytest.raises(USER_ERRORS, match="more than an archive may hold"):
        pack_folder(str(src), str(tmp_path / "small"), max_bytes=10_000)


def test_unpack_refuses_paths_leaving_the_folder(tmp_path):
    (tmp_path / "x").write_text("x")
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        tar.add(tmp_path / "x", arcname="../x")
    with pytest.raises(USER_ERRORS, match="not a plain relative file"):
        unpack_archives([str(tmp_path / "bad.tar")], str(tmp_path / "dest"))


def tiny_conf(tmp_path: pathlib.Path) -> pathlib.Path:
    """The synthetic LargeFOV-small nets with a 2-iteration solver, for the recipe's dry run."""
    conf = tmp_path / "conf" / "tiny"
    conf.mkdir(parents=True)
    src = REPO / "prototxt" / "synthetic" / "LargeFOV-small"
    for name in ("train", "test"):
        text = (src / f"{name}.prototxt").read_text().replace("num_output: 5\n", "num_output: 3\n")
        (conf / f"{name}.prototxt").write_text(text)
    (conf / "solver.prototxt").write_text(
        f'net: "{conf}/train.prototxt"\nbase_lr: 0.001\nlr_policy: "poly"\npower: 0.9\nmax_iter: 2\n'
        'momentum: 0.9\nsnapshot: 0\nsnapshot_prefix: "${EXP}/model/train"\nrandom_seed: 1\n')
    return conf


def test_recipe_dry_run_and_receive(tmp_path):
    from deeplab.recipe import run as recipe
    from caffe.model_io import load_caffemodel
    root = tmp_path / "data"
    ids = tinyset.make(root, n=5)
    conf = tiny_conf(tmp_path)
    list_dir = lists(root, ids)
    (list_dir / "val_id.txt").write_text("".join(f"{i}\n" for i in ids[2:]))
    init = tmp_path / "init.caffemodel"
    import torch
    from caffe.net import Net
    torch.manual_seed(0)
    Net(str(conf / "test.prototxt"), "TEST", mapping={"DATA_ROOT": str(root), "LIST_DIR": str(list_dir),
                                                       "TEST_SET": "val", "FEATURE_DIR": str(tmp_path)}).save(init)
    made = recipe.make_pack(str(tmp_path / "pack"), str(root), str(list_dir), ["train", "val", "test"],
                            str(init), "conv.*", quality=90)
    assert made["images"] == {"train": 3, "val": 3, "test": 2} and made["init_layers"][0] == "conv1_1"
    out = tmp_path / "out"
    done = recipe.run(str(tmp_path / "pack"), str(conf), str(out), str(tmp_path / "work"), gpu=None, amp="bf16",
                      channels_last=True, workers=1, minutes=None, sets=["val", "test"],
                      classes=str(root / "classes.txt"), max_bytes=200_000, deadline=time.time() + 600)
    assert done["iterations"] == 2 and done["sets"] == ["val", "test"] and done["skipped_sets"] == []
    train_argv, *extract_argvs = done["commands"]
    assert "--amp" in train_argv and all("--amp" not in a for a in extract_argvs)   # extraction in float32
    assert done["extraction"] == "float32" and done["omitted"] == []
    record = json.loads((out / "recipe.json").read_text())
    assert record["archives"] == [os.path.basename(a) for a in sorted(out.glob("results.*.tar"))]
    assert "Iteration 2" in (out / "train.log").read_text() or "Optimization Done" in (out / "train.log").read_text()
    assert [c[0] for c in record["commands"]] == ["deeplab-train", "deeplab-extract", "deeplab-extract"]
    finished = recipe.finish(str(out))
    assert finished["returned"] == sorted(p.name for p in out.iterdir())
    assert json.loads((out / "recipe.json").read_text())["returned"] == finished["returned"]

    exper = tmp_path / "exper"
    recipe.receive(str(out), str(exper))
    assert sorted(p.stem for p in (exper / "features" / "test").glob("*.npy")) == ids[1:3]
    assert sorted(p.stem for p in (exper / "res" / "val" / "dcnn").glob("*.png")) == ids[2:]
    model = exper / "model" / "train_iter_2.caffemodel"
    # The weights that come back are the float16-rounded ones the score maps were made with.
    assert all(np.array_equal(b, b.astype(np.float16).astype(np.float32))
               for layer in load_caffemodel(model) for b in layer.blobs)
    assert (exper / "log" / "train.log").is_file() and (exper / "recipe.json").is_file()
    with pytest.raises(USER_ERRORS, match="no recipe.json"):
        recipe.receive(str(tmp_path), str(exper))


def test_recipe_run_refuses_an_incomplete_pack(tmp_path):
    from deeplab.recipe import run as recipe
    conf = tiny_conf(tmp_path)
    (tmp_path / "pack").mkdir()
    with pytest.raises(USER_ERRORS, match="no dataset.npz"):
        recipe.run(str(tmp_path / "pack"), str(conf), str(tmp_path / "out"), str(tmp_path / "w"), gpu=None,
                   amp=None, channels_last=False, workers=1, minutes=None, sets=["val"], classes="camvid")
    assert not (tmp_path / "out").exists()


def test_recipe_run_refuses_a_deadline_that_leaves_no_training_time(tmp_path):
    from deeplab.recipe import run as recipe
    root = tmp_path / "data"
    ids = tinyset.make(root, n=3)
    conf = tiny_conf(tmp_path)
    list_dir = lists(root, ids)
    (list_dir / "val_id.txt").write_text("".join(f"{i}\n" for i in ids[2:]))
    from caffe.net import Net
    Net(str(conf / "test.prototxt"), "TEST", mapping={"DATA_ROOT": str(root), "LIST_DIR": str(list_dir),
                                                       "TEST_SET": "val", "FEATURE_DIR": str(tmp_path)}).save(
        str(tmp_path / "init.caffemodel"))
    recipe.make_pack(str(tmp_path / "pack"), str(root), str(list_dir), ["train", "val"], str(tmp_path / "init.caffemodel"),
                     "conv.*")
    with pytest.raises(USER_ERRORS, match="leaves no time to train"):
        recipe.run(str(tmp_path / "pack"), str(conf), str(tmp_path / "out"), str(tmp_path / "w"), gpu=None,
                   amp=None, channels_last=False, workers=1, minutes=6, sets=["val"],
                   classes=str(root / "classes.txt"), deadline=time.time() + 30)
