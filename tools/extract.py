#!/usr/bin/env python
"""Dump one score map per listed image: the deeplab-extract command (see --help)."""
from deeplab.commands.extract import run

if __name__ == "__main__":
    run()
