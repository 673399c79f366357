#!/usr/bin/env python
"""Evaluate label PNGs against ground truth: the deeplab-eval command (see --help)."""
from deeplab.commands.eval import run

if __name__ == "__main__":
    run()
