"""Weights: the ImageNet VGG-16 convolution weights converted to the DeepLab nets' caffemodels
(``vgg16``, ``vgg16_init``) and the model zoo's manifest and downloads (``zoo``)."""
