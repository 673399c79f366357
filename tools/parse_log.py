#!/usr/bin/env python
"""Caffe-format training log to CSV and curves: the deeplab-parse-log command (see --help)."""
from deeplab.commands.parse_log import run

if __name__ == "__main__":
    run()
