"""caffe.NetSpec / layers / params / to_proto and caffe.coord_map.crop."""
from __future__ import annotations

import numpy as np
import pytest

import caffe
from caffe import layers as L, params as P
from caffe.coord_map import coord_map_from_to, crop


def small_net():
    n = caffe.NetSpec()
    n.data, n.label = L.Input(shape=[dict(dim=[2, 3, 8, 8]), dict(dim=[2, 1, 4, 4])], ntop=2)
    n.conv = L.Convolution(n.data, kernel_size=3, pad=1, num_output=4, weight_filler=dict(type="xavier"),
                           param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)])
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.loss = L.SoftmaxWithLoss(n.pool, n.label, loss_param=dict(ignore_label=255))
    return n


def test_to_proto_names_params_and_in_place():
    net = small_net().to_proto()
    names = [(l.name, l.type, list(l.bottom), list(l.top)) for l in net.layer]
    assert names == [("data", "Input", [], ["data", "label"]), ("conv", "Convolution", ["data"], ["conv"]),
                     ("relu", "ReLU", ["conv"], ["conv"]), ("pool", "Pooling", ["conv"], ["pool"]),
                     ("loss", "SoftmaxWithLoss", ["pool", "label"], ["loss"])]
    conv = net.layer[1]
    assert list(conv.convolution_param.kernel_size) == [3] and conv.convolution_param.num_output == 4
    assert conv.convolution_param.weight_filler.type == "xavier"
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert net.layer[3].pooling_param.pool == caffe.proto.caffe_pb2.PoolingParameter.MAX
    assert net.layer[4].loss_param.ignore_label == 255
    assert list(net.layer[0].input_param.shape[1].dim) == [2, 1, 4, 4]


def test_generated_proto_builds_and_runs(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(str(small_net().to_proto()))
    net = caffe.Net(str(path), caffe.TRAIN)
    assert net.blobs["pool"].shape == (2, 4, 4, 4) and net.outputs == ["loss"]
    assert np.isfinite(net.forward()["loss"])


def test_automatic_names_zero_tops_and_type_error():
    data = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    proto = L.ReLU(L.Convolution(data, kernel_size=1, num_output=1)).to_proto()
    assert [(l.name, list(l.top)) for l in proto.layer] == [
        ("Input1", ["Input1"]), ("Convolution1", ["Convolution1"]), ("ReLU1", ["ReLU1"])]
    silence = L.Silence(data, ntop=0)
    assert caffe.to_proto(data).layer[0].type == "Input" and not silence.tops
    pair = L.Input(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(pair, ntop=0)


def test_deconvolution_params_go_to_convolution_param():
    up = L.Deconvolution(L.Input(shape=dict(dim=[1, 1, 4, 4])), kernel_size=4, stride=2, num_output=1)
    layer = up.to_proto().layer[1]
    assert list(layer.convolution_param.kernel_size) == [4] and list(layer.convolution_param.stride) == [2]


def test_crop_offsets_through_conv_pool_deconv():
    # FCN's pattern: conv pad 100 -> pool /2 -> deconv x2; data <- deconv maps x -> x - 100
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 50, 50]))
    n.conv = L.Convolution(n.data, kernel_size=3, pad=100, num_output=4)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.up = L.Deconvolution(n.pool, kernel_size=4, stride=2, num_output=4)
    ax, a, b = coord_map_from_to(n.up, n.data)
    assert ax == 1 and a == 1 and b == -100
    n.score = crop(n.up, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [100]
    n.small = L.Convolution(n.data, kernel_size=5, num_output=4)
    with pytest.raises(AssertionError, match="negative offset"):
        crop(n.small, n.data)  # the conv output is smaller than the data
    n.ip = L.InnerProduct(n.data, num_output=2)
    with pytest.raises(RuntimeError):
        coord_map_from_to(n.ip, n.data)
