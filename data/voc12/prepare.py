#!/usr/bin/env python
"""Prepare PASCAL VOC 2012 + SBD: the deeplab-prepare-voc12 command (see --help)."""
from deeplab.commands.prepare_voc12 import run

if __name__ == "__main__":
    run()
