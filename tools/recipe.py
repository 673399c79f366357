#!/usr/bin/env python
"""Pack, run and receive an experiment on a lent machine: the deeplab-recipe command (see --help)."""
from deeplab.commands.recipe import run

if __name__ == "__main__":
    run()
