"""Shared test helpers: where ../shared is, and the rule for skipping without it."""
from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
SHARED = (REPO.parent / "shared").resolve()


def shared_path(*parts: str) -> pathlib.Path:
    """Path under ../shared; skips the test where it is absent, fails under CI."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{p} is missing; under CI ../shared must be present")
        pytest.skip(f"{p} not present (a user's clone without ../shared)")
    return p


@pytest.fixture
def shared():
    """The ../shared folder (skip where absent, fail under CI)."""
    return shared_path()


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """The torch device of a device-parametrised test: the CPU always, and
    ``cuda:$CAFFE_TEST_GPU`` (default 0) where torch sees CUDA, skipped ("no CUDA") elsewhere.
    Tests that take it carry the ``device`` marker (``pytest -m device``: tools/gpu_check.sh)."""
    import torch
    if request.param == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    return torch.device("cuda", int(os.environ.get("CAFFE_TEST_GPU", "0")))


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module of tiny inputs (no OpenMP start-up or spinning on a
    busy machine): ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(items):
    """Mark every test that takes the ``device`` fixture with ``device``."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(autouse=True)
def _float32_commands_and_private_cache(monkeypatch, tmp_path_factory):
    """The training and extraction commands default to ``--amp auto`` (caffe.precision), which
    may choose bf16 on one machine and float32 on another: tests run them in float32
    (``DEEPLAB_AMP``; their expected numbers are float32's) unless a test says otherwise, and a
    probe's cache goes to a temporary folder, never the user's."""
    monkeypatch.setenv("DEEPLAB_AMP", "fp32")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
