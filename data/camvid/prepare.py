#!/usr/bin/env python
"""Prepare CamVid: the deeplab-prepare-camvid command (see --help)."""
from deeplab.commands.prepare_camvid import run

if __name__ == "__main__":
    run()
