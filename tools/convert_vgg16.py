#!/usr/bin/env python
"""ImageNet VGG-16 to DeepLab initial weights: the deeplab-convert-vgg16 command (see --help)."""
from deeplab.commands.convert_vgg16 import run

if __name__ == "__main__":
    run()
