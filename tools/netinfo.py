#!/usr/bin/env python
"""Shapes, parameters, strides and receptive fields of a net: the deeplab-netinfo command (see --help)."""
from deeplab.commands.netinfo import run

if __name__ == "__main__":
    run()
