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
