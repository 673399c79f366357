"""README's list of layer types is the registry's (python -m caffe.layer), not a hand-kept list."""
from __future__ import annotations

import re

from conftest import REPO
from caffe.layer.__main__ import type_list


def test_readme_lists_the_registered_layer_types():
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- layer types: python -m caffe.layer -->\n(.*?)\n<!-- /layer types -->", text, re.S)
    assert block, "README.md lost its generated layer-type list"
    assert block.group(1) == type_list(), "README.md's layer types are stale: paste `python -m caffe.layer`"


def test_type_list_names_v1_spellings():
    listed = type_list()
    assert "`Convolution` (CONVOLUTION)" in listed and "`DenseCRF` (DENSE_CRF)" in listed
    assert "`BatchNorm`," in listed  # no V1 enum
