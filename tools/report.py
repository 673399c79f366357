#!/usr/bin/env python
"""One HTML page for an experiment folder: the deeplab-report command (see --help)."""
from deeplab.commands.report import run

if __name__ == "__main__":
    run()
