"""The lent GPU machine's limits as the recipe checks them (deeplab/recipe/lease.py, tools/gpu_recipe.sh;
issue 25): the GPU branch's commands, upload and return sizes, /dev/shm, the image's versions."""
from __future__ import annotations

import os
import pathlib
import subprocess

import numpy as np
import pytest

from conftest import REPO
from deeplab import DeepLabError
from deeplab.commands.recipe import check_plan
from deeplab.recipe import lease
from deeplab.recipe.pack import pack_folder, save_float16, unpack_weights
from caffe.model_io import LayerBlobs, load_caffemodel

MIB = 1 << 20


def plan(tmp_path, **env) -> list[str]:
    """The commands tools/gpu_recipe.sh would run with these settings (PLAN_ONLY=1)."""
    full = {**os.environ, "OUT": str(tmp_path / "out"), "PLAN_ONLY": "1", "PYTHON": "python3", **env}
    done = subprocess.run(["bash", str(REPO / "tools" / "gpu_recipe.sh")], cwd=REPO, env=full,
                          capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_gpu_branch_names_a_cuda_device_torch_accepts(tmp_path):
    lines = plan(tmp_path, GPU="0", WORKERS="16")
    commands = check_plan(lines, 0)
    bench = next(c for c in commands if any(a.endswith("bench_crf_torch.py") for a in c))
    assert bench[bench.index("--throughput") + 1] == "cuda:0"
    assert bench[bench.index("--batches") + 1] == "1,8,32" and bench[bench.index("--speed-images") + 1] == "4"
    assert bench[bench.index("--sample") + 1] == "pack/camvid/sample"
    run = next(c for c in commands if "run" in c)
    assert run[run.index("--gpu") + 1] == "0" and run[run.index("--amp") + 1] == "bf16" and "--deadline" in run
    assert commands[-1][-3:] == ["finish", "--out", str(tmp_path / "out")]
    other = plan(tmp_path, GPU="1")
    assert check_plan(other, 1) and "--throughput cuda:1" in " ".join(other)


def test_cpu_branch_is_the_dry_runs(tmp_path):
    lines = " ".join(plan(tmp_path, GPU="", AMP=""))
    assert "--throughput cpu --batches 1 --speed-images 1 --repeat 1" in lines
    assert "--gpu" not in lines and "--amp" not in lines


def test_check_plan_refuses_the_old_expansion():
    """`${GPU:+cuda}${GPU:-cpu}` with GPU=0 gave 'cuda0', which torch.device refuses."""
    lines = ["python3 -m deeplab.commands.recipe run --pack p --conf c --out o --work w --gpu 0",
             "timeout 90 python3 bench/bench_crf_torch.py --throughput cuda0 --batches 1,8,32"]
    with pytest.raises(DeepLabError, match="'cuda0' is not one torch accepts"):
        check_plan(lines, 0)
    with pytest.raises(DeepLabError, match="runs on cuda:1, not cuda:0"):
        check_plan([lines[0], lines[1].replace("cuda0", "cuda:1")], 0)
    with pytest.raises(DeepLabError, match="lacks crf bench"):
        check_plan(lines[:1], 0)


def git_repo(path: pathlib.Path) -> pathlib.Path:
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / ".gitignore").write_text("/pack/\n")
    return path


def test_upload_counts_tree_and_carried_paths_and_refuses_above_the_budget(tmp_path):
    repo = git_repo(tmp_path / "repo")
    (repo / "a.bin").write_bytes(b"x" * 3000)        # untracked, not ignored: travels
    (repo / "pack").mkdir()
    (repo / "pack" / "data.npz").write_bytes(b"y" * 5000)   # ignored: travels only when carried
    done = lease.check_upload(str(repo), [], budget=10_000)
    assert done["parts"]["tree"] == 3000 + len("/pack/\n")
    done = lease.check_upload(str(repo), ["pack"], budget=10_000)
    assert done["parts"]["pack"] == 5000 and done["bytes"] == 8007
    with pytest.raises(DeepLabError, match=r"tree 0.0 MiB, pack 0.0 MiB\) exceeds 0 MiB"):
        lease.check_upload(str(repo), ["pack"], budget=8000)
    with pytest.raises(DeepLabError, match="does not exist"):
        lease.check_upload(str(repo), ["nothing"])


def sparse(path: pathlib.Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def test_return_keeps_one_file_and_8_mib_of_headroom(tmp_path):
    out = tmp_path / "out"
    for k in range(4):
        sparse(out / f"results.{k}.tar", 13 * MIB)
    for name in ("train.log", "recipe.json", "crf_throughput.txt"):
        sparse(out / name, 1000)
    files = lease.check_return(str(out))
    assert len(files) == 7 and files[0] == {"name": "crf_throughput.txt", "bytes": 1000}
    sparse(out / "extra.txt", 10)                      # an 8th file leaves no headroom
    with pytest.raises(DeepLabError, match="8 files"):
        lease.check_return(str(out))
    os.remove(out / "extra.txt")
    sparse(out / "results.3.tar", 5 * MIB)
    sparse(out / "results.0.tar", 16 * MIB + 1)        # would be dropped
    with pytest.raises(DeepLabError, match="results.0.tar larger than 16 MiB"):
        lease.check_return(str(out))
    for k, size in enumerate((15, 15, 15, 11)):          # 56 MiB and 3000 bytes: past the headroom
        sparse(out / f"results.{k}.tar", size * MIB)
    with pytest.raises(DeepLabError, match="7 files, 56.0 MiB; at most 7 files and 56 MiB"):
        lease.check_return(str(out))
    sparse(out / "a" / "b" / "c" / "d.txt", 1)   # $OUT/a/b/file comes back, one more level not
    with pytest.raises(DeepLabError, match="too deep or an odd name"):
        lease.check_return(str(out))


def test_loader_workers_fit_dev_shm():
    batch = lease.train_batch_bytes(str(REPO / "prototxt" / "camvid" / "DeepLab-LargeFOV-GPU" / "train.prototxt"))
    assert batch == 16 * 4 * 321 * 321 * 4                     # about 26 MB, as the issue counts
    assert lease.loader_workers(16, batch, shm_free=64 << 30) == 16
    # 16 workers x prefetch 4 x 26 MB = 1.7 GB: a 1 GiB /dev/shm (half of it for batches) holds 5
    assert lease.loader_workers(16, batch, shm_free=1 << 30) == 5
    assert lease.loader_workers(16, batch, shm_free=64 << 20) == 0   # not one: load in the process


def test_versions_are_checked_against_the_gpu_image():
    import numpy
    import torch
    have = {"python": "3.11", "torch": ".".join(torch.__version__.split(".")[:2]),
            "numpy": ".".join(numpy.__version__.split(".")[:2])}
    import sys
    have["python"] = ".".join(sys.version.split()[0].split(".")[:2])
    assert lease.check_versions(have)["numpy"] == numpy.__version__
    with pytest.raises(DeepLabError, match=r"torch .* \(the GPU image has 1.0\)"):
        lease.check_versions({**have, "torch": "1.0"})
    assert lease.GPU_IMAGE == {"python": "3.12", "torch": "2.11", "numpy": "2.5"}


def test_float16_weights_are_stored_in_fewer_bytes_and_exactly(tmp_path):
    rng = np.random.default_rng(0)
    blobs = [(rng.standard_normal((64, 32, 3, 3)) * 0.02).astype(np.float32), rng.standard_normal(64).astype(np.float32)]
    save_float16([LayerBlobs("conv1", "Convolution", blobs)], str(tmp_path / "w.npz"))
    assert os.path.getsize(tmp_path / "w.npz") < 0.93 * sum(b.size * 2 for b in blobs)
    unpack_weights([str(tmp_path / "w.npz")], str(tmp_path / "w.caffemodel"))
    (layer,) = load_caffemodel(str(tmp_path / "w.caffemodel"))
    for got, want in zip(layer.blobs, blobs):
        assert got.shape == want.shape and np.array_equal(got, want.astype(np.float16).astype(np.float32))


def test_pack_folder_leaves_out_the_last_files_past_the_total(tmp_path):
    src = tmp_path / "back"
    for rel in ("features/a.npy", "features/b.npy", "weights/00_conv.npz", "weights/01_fc.npz"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"z" * 40_000)
    omitted: list[str] = []
    archives = pack_folder(str(src), str(tmp_path / "results"), 100_000, max_total=110_000, omitted=omitted)
    assert omitted == ["weights/00_conv.npz", "weights/01_fc.npz"]
    assert sum(os.path.getsize(a) for a in archives) <= 110_000
