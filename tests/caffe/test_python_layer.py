"""The Python layer: user subclasses of caffe.Layer in nets, forward, backward, params, phase."""
from __future__ import annotations

import numpy as np
import pytest

import caffe
from caffe import CaffeError

LAYERS = '''
import caffe
class Scale(caffe.Layer):
    def setup(self, bottom, top):
        self.k = float(self.param_str)
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top):
        top[0].data[...] = self.k * bottom[0].data
    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.k * top[0].diff

class Bias(caffe.Layer):
    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 0.5
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data + self.blobs[0].data
    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += top[0].diff.sum()
        bottom[0].diff[...] = top[0].diff

class Phase(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape()
    def forward(self, bottom, top):
        top[0].data[()] = self.phase

class Broken(caffe.Layer):
    def setup(self, bottom, top):
        raise ValueError("bad param_str")
'''

NET = """name: 'py' force_backward: true
layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } }
layer { name: 'scale' type: 'Python' bottom: 'x' top: 'y'
  python_param { module: 'user_layers' layer: 'Scale' param_str: '3' } }
layer { name: 'bias' type: 'Python' bottom: 'y' top: 'z' python_param { module: 'user_layers' layer: 'Bias' } }
layer { name: 'relu' type: 'ReLU' bottom: 'z' top: 'z' }
"""


@pytest.fixture
def net_file(tmp_path, monkeypatch):
    (tmp_path / "user_layers.py").write_text(LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    return str(path)


def test_forward_backward_and_learnable_blob(net_file):
    net = caffe.Net(net_file, caffe.TRAIN)
    assert net.layers[1].type == "Python" and net.layers[1].k == 3.0  # the user's object
    net.blobs["x"].data[...] = [[1, -1, 2], [0, -2, 3]]
    z = net.forward()["z"]
    np.testing.assert_allclose(z, np.maximum(3 * np.array([[1, -1, 2], [0, -2, 3]]) + 0.5, 0))
    net.blobs["z"].diff[...] = 1
    net.backward()
    mask = z > 0  # relu passes 1 where z > 0; scale multiplies by 3
    np.testing.assert_allclose(net.blobs["x"].diff, 3 * mask)
    assert net.params["bias"][0].diff.item() == mask.sum()
    net.params["bias"][0].data[...] = 10  # learnable blob: the net's memory, saved with the net
    np.testing.assert_allclose(net.forward()["z"], np.maximum(3 * net.blobs["x"].data + 10, 0))


def test_save_copy_and_reshape(net_file, tmp_path):
    net = caffe.Net(net_file, caffe.TEST)
    net.params["bias"][0].data[...] = 2
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    other = caffe.Net(net_file, caffe.TEST, weights=weights)
    assert other.params["bias"][0].data.item() == 2
    other.blobs["x"].reshape(4, 1)
    other.blobs["x"].data[...] = 1
    assert other.forward()["z"].shape == (4, 1)
    assert all(b.data.shape == (4, 1) for b in other.blobs.values())


def test_phase_and_errors(tmp_path, monkeypatch, net_file):
    path = tmp_path / "phase.prototxt"
    path.write_text("layer { name: 'p' type: 'Python' top: 'p' python_param { module: 'user_layers' layer: 'Phase' } }")
    for phase in (caffe.TRAIN, caffe.TEST):
        assert caffe.Net(str(path), phase).forward()["p"] == phase
    path.write_text("layer { name: 'b' type: 'Python' top: 'b' python_param { module: 'user_layers' layer: 'Broken' } }")
    with pytest.raises(ValueError, match="bad param_str"):
        caffe.Net(str(path), caffe.TEST)  # the user's exception, unchanged, as in Caffe
    path.write_text("layer { name: 'm' type: 'Python' top: 'm' python_param { module: 'no_such_mod' layer: 'X' } }")
    with pytest.raises(CaffeError, match="no_such_mod"):
        caffe.Net(str(path), caffe.TEST)
    path.write_text("layer { name: 'm' type: 'Python' top: 'm' python_param { module: 'user_layers' layer: 'Nope' } }")
    with pytest.raises(CaffeError, match="no class 'Nope'"):
        caffe.Net(str(path), caffe.TEST)


def test_python_layer_trains_in_the_engine_net(net_file):
    """The engine's own Net (autograd over the whole graph) runs Python layers too."""
    import torch
    from caffe.net import Net as EngineNet
    net = EngineNet(net_file, "TRAIN")
    x = torch.tensor([[1.0, -1.0, 2.0], [0.0, -2.0, 3.0]], requires_grad=True)
    z = net({"x": x})["z"]
    z.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 * (z.detach().numpy() > 0))
    assert net.layer("bias").blobs[0].grad.item() == (z > 0).sum().item()
