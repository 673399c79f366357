#!/usr/bin/env python
"""Train a net with Caffe's SGD from a solver prototxt: the deeplab-train command (see --help)."""
from deeplab.commands.train import run

if __name__ == "__main__":
    run()
