#!/usr/bin/env python
"""Download known weights from the model zoo: the deeplab-get-model command (see --help)."""
from deeplab.commands.get_model import run

if __name__ == "__main__":
    run()
