#!/usr/bin/env python
"""Generate the synthetic embedded dataset: the deeplab-make-synthetic command (see --help)."""
from deeplab.commands.make_synthetic import run

if __name__ == "__main__":
    run()
