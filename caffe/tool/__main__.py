"""``python -m caffe.tool``: the ``caffe`` command."""
from . import run

run()
