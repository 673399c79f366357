"""``python -m densecrf`` (and the ``densecrf`` console script): the pipeline's batch CRF command.

The command reads dumped score maps and images and writes label maps, so it belongs to the
pipeline (``deeplab.commands.densecrf``); this entry point keeps the release's name. Importing
``densecrf`` itself never loads it.
"""
from deeplab.commands.densecrf import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
