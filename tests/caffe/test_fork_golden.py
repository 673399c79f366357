"""The DeepLab fork's remaining layer types against the fork's own outputs (tests/fixtures/golden/fork).

The fixtures were made by tools/make_fork_golden.py running tests/caffe/fork_golden_cases.py on a
CPU_ONLY build of the fork (corenel/deeplab-public); here the same code runs on this project's
``caffe`` and every array must agree to float32 round-off.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import caffe
from conftest import FIXTURES
from fork_golden_cases import DATA_DIR, FORK_CASES, FORK_TYPES, NetDriver, run_fork_case
from test_bvlc_golden import assert_close

GOLDEN = FIXTURES / "golden" / "fork"
CASES = {case.name: case for case in FORK_CASES}


class OurDriver(NetDriver):
    """fork_golden_cases.NetDriver over this project's pycaffe."""

    def open(self, path):
        self.net = caffe.Net(path, caffe.TEST)

    def data(self, blob):
        return self.net.blobs[blob].data

    def diff(self, blob):
        return self.net.blobs[blob].diff

    def param_data(self, layer, i):
        return self.net.params[layer][i].data

    def param_diff(self, layer, i):
        return self.net.params[layer][i].diff

    def num_params(self, layer):
        return len(self.net.params[layer]) if layer in self.net.params else 0

    def forward(self):
        self.net.forward()

    def backward(self):
        self.net.backward()


def test_every_case_has_its_fixture_and_every_type_is_covered():
    assert {p.stem for p in (GOLDEN / "layers").glob("*.npz")} == set(CASES)
    assert {case.body.split()[1] for case in FORK_CASES} == FORK_TYPES


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_matches_the_fork(name, tmp_path):
    ref = np.load(GOLDEN / "layers" / f"{name}.npz")
    shutil.copytree(GOLDEN / DATA_DIR, tmp_path / DATA_DIR)
    ours = run_fork_case(OurDriver(), CASES[name], str(tmp_path))
    assert str(ours.pop("prototxt")) == str(ref["prototxt"])
    assert sorted(ours) == sorted(k for k in ref.files if k != "prototxt")
    for key in sorted(ours):
        if key.startswith(("input/", "topdiff/")):   # what the case fed: the same numpy draws
            np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)
        else:
            assert_close(ours[key], ref[key], f"{name}: {key}")
