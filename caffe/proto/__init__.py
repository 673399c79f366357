"""Caffe's schema (BVLC field numbers plus the DeepLab fork's fields): ``caffe.proto`` and the
module ``caffe_pb2`` generated from it by ``make proto`` (committed; do not edit by hand)."""
