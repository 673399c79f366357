"""The installed packages win over a script's neighbouring folder of the same name without
__init__.py, as with a normal install (BVLC's python/caffe/imagenet layout next to a script:
through setuptools' editable import finder such a folder became an empty namespace package)."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_a_caffe_folder_next_to_a_script_does_not_shadow_the_package(tmp_path):
    for name in ("caffe/imagenet", "deeplab", "densecrf"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "caffe" / "imagenet" / "ilsvrc_2012_mean.npy").write_bytes(b"")
    script = tmp_path / "classify.py"
    script.write_text("import caffe, deeplab, densecrf\n"
                      "caffe.set_mode_cpu()\n"
                      "print(caffe.__file__)\nprint(deeplab.__file__)\nprint(densecrf.__file__)\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [str(REPO / p / "__init__.py") for p in ("caffe", "deeplab", "densecrf")]
