#!/usr/bin/env python
"""Search the dense CRF's parameters: the deeplab-crf-search command (see --help)."""
from deeplab.commands.crf_search import run

if __name__ == "__main__":
    run()
