"""Binary caffemodel / solverstate IO against Caffe's own files and the generated classes."""
import os
import struct

import numpy as np
import pytest

from conftest import FIXTURES
from caffe import CaffeError
from caffe.model_io import (LayerBlobs, SolverState, load_caffemodel, load_solverstate,
                        save_caffemodel, save_solverstate)
from caffe.proto import caffe_pb2 as pb

GOLDEN = FIXTURES / "golden"
V2_FILES = ["layers/net.caffemodel"] + [f"solver_{s}/{f}.caffemodel" for s in ("step", "poly", "multistep")
                                         for f in ("init", "snap_iter_7")]


def _reference(path):
    """The same file through the generated classes: [(name, type, [(shape, values)])]."""
    net = pb.NetParameter.FromString(path.read_bytes())
    out = []
    for layer in list(net.layer) + list(net.layers):
        blobs = []
        for b in layer.blobs:
            shape = tuple(b.shape.dim) if b.HasField("shape") else (b.num, b.channels, b.height, b.width)
            blobs.append((shape, np.array(b.data, np.float32)))
        if blobs:
            out.append((layer.name, layer.type, blobs))
    return out


def _assert_same(ours, ref):
    assert [l.name for l in ours] == [r[0] for r in ref]
    for layer, (_, _, blobs) in zip(ours, ref):
        assert len(layer.blobs) == len(blobs)
        for got, (shape, values) in zip(layer.blobs, blobs):
            assert got.dtype == np.float32 and got.shape == shape
            np.testing.assert_array_equal(got.reshape(-1), values)


def test_v1_caffemodel_matches_generated_parse():
    path = GOLDEN / "v1_upgrade" / "v1_weights.caffemodel"
    layers = load_caffemodel(path)
    _assert_same(layers, _reference(path))
    assert [(l.name, l.type) for l in layers] == [("conv1", "Convolution"), ("fc", "Convolution")]
    # legacy blobs keep their 4-D num/channels/height/width shape
    assert [b.shape for b in layers[0].blobs] == [(4, 3, 3, 3), (1, 1, 1, 4)]


@pytest.mark.parametrize("name", V2_FILES)
def test_v2_caffemodels_match_generated_parse(name):
    path = GOLDEN / name
    layers = load_caffemodel(path)
    ref = _reference(path)
    _assert_same(layers, ref)
    assert [l.type for l in layers] == [r[1] for r in ref]
    assert all(l.type == "Convolution" for l in layers)


@pytest.mark.parametrize("policy", ["step", "poly", "multistep"])
def test_golden_solverstate(policy):
    folder = GOLDEN / f"solver_{policy}"
    state = load_solverstate(folder / "snap_iter_7.solverstate")
    ref = pb.SolverState.FromString((folder / "snap_iter_7.solverstate").read_bytes())
    assert state.iter == 7 and state.learned_net == ref.learned_net
    assert state.learned_net.endswith("snap_iter_7.caffemodel")
    assert state.current_step == ref.current_step
    weights = [b for layer in load_caffemodel(folder / "snap_iter_7.caffemodel") for b in layer.blobs]
    assert [h.shape for h in state.history] == [w.shape for w in weights]
    for got, blob in zip(state.history, ref.history):
        np.testing.assert_array_equal(got.reshape(-1), np.array(blob.data, np.float32))
    assert any(np.abs(h).max() > 0 for h in state.history)


def test_save_load_round_trip_and_caffe_readable(tmp_path):
    rng = np.random.default_rng(0)
    layers = [LayerBlobs("conv1", "Convolution", [rng.standard_normal((4, 3, 3, 3), np.float32),
                                                  rng.standard_normal(4).astype(np.float32)]),
              LayerBlobs("scale", "Scale", [np.array(2.5, np.float32)]),
              LayerBlobs("fc", "InnerProduct", [rng.standard_normal((5, 12)).astype(np.float64)])]
    path = tmp_path / "w.caffemodel"
    save_caffemodel(path, layers, net_name="tiny")
    back = load_caffemodel(path)
    assert [(l.name, l.type) for l in back] == [(l.name, l.type) for l in layers]
    for a, b in zip(layers, back):
        for x, y in zip(a.blobs, b.blobs):
            assert y.dtype == np.float32 and y.shape == x.shape
            np.testing.assert_array_equal(y, x.astype(np.float32))
    net = pb.NetParameter.FromString(path.read_bytes())
    assert net.name == "tiny" and not net.layers
    assert [list(b.shape.dim) for b in net.layer[0].blobs] == [[4, 3, 3, 3], [4]]
    assert list(net.layer[1].blobs[0].shape.dim) == [] and list(net.layer[1].blobs[0].data) == [2.5]
    np.testing.assert_array_equal(np.array(net.layer[2].blobs[0].data, np.float32),
                                  layers[2].blobs[0].astype(np.float32).ravel())
    assert os.listdir(tmp_path) == ["w.caffemodel"]  # atomic: no temporary left behind


def test_golden_file_survives_save_load(tmp_path):
    src = GOLDEN / "v1_upgrade" / "v1_weights.caffemodel"
    save_caffemodel(tmp_path / "v2.caffemodel", load_caffemodel(src))
    _assert_same(load_caffemodel(tmp_path / "v2.caffemodel"), _reference(src))


def test_solverstate_round_trip(tmp_path):
    history = [np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.full(3, -1.5, np.float32)]
    path = tmp_path / "s.solverstate"
    save_solverstate(path, SolverState(1234, "snap_iter_1234.caffemodel", history, current_step=2))
    state = load_solverstate(path)
    assert (state.iter, state.learned_net, state.current_step) == (1234, "snap_iter_1234.caffemodel", 2)
    for a, b in zip(history, state.history):
        np.testing.assert_array_equal(a, b)
    ref = pb.SolverState.FromString(path.read_bytes())  # what Caffe's reader sees
    assert ref.iter == 1234 and list(ref.history[0].shape.dim) == [2, 3, 4]
    assert list(ref.history[1].data) == [-1.5] * 3


def _varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _tag(number, wire):
    return _varint((number << 3) | wire)


def _ld(number, payload):
    return _tag(number, 2) + _varint(len(payload)) + payload


def test_unpacked_and_double_data(tmp_path):
    values = [0.5, -2.0, 3.25, 7.0]
    unpacked = b"".join(_tag(5, 5) + struct.pack("<f", v) for v in values[:3])
    packed_rest = _ld(5, struct.pack("<f", values[3]))  # a later packed chunk appends
    shape = _ld(7, pb.BlobShape(dim=[2, 2]).SerializeToString())
    blob1 = shape + unpacked + packed_rest
    doubles = b"".join(_tag(8, 1) + struct.pack("<d", v) for v in values)  # unpacked doubles
    blob2 = pb.BlobProto(num=1, channels=1, height=2, width=2).SerializeToString() + doubles
    blob3 = pb.BlobProto(double_data=values, shape=pb.BlobShape(dim=[4])).SerializeToString()
    layer = _ld(1, b"L") + _ld(2, b"Convolution") + _ld(7, blob1) + _ld(7, blob2) + _ld(7, blob3)
    path = tmp_path / "odd.caffemodel"
    path.write_bytes(_ld(100, layer))
    (got,) = load_caffemodel(path)
    ref = pb.NetParameter.FromString(path.read_bytes()).layer[0]
    assert list(ref.blobs[0].data) == values  # protobuf reads the same values
    np.testing.assert_array_equal(got.blobs[0], np.array(values, np.float32).reshape(2, 2))
    np.testing.assert_array_equal(got.blobs[1], np.array(values, np.float32).reshape(1, 1, 2, 2))
    np.testing.assert_array_equal(got.blobs[2], np.array(values, np.float32))
    assert all(b.dtype == np.float32 for b in got.blobs)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CaffeError, match=r"missing\.caffemodel: no such file"):
        load_caffemodel(tmp_path / "missing.caffemodel")
    data = (GOLDEN / "layers" / "net.caffemodel").read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CaffeError, match=rf"^{cut}: truncated or corrupt caffemodel"):
        load_caffemodel(cut)
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b'name: "not binary"\nlayer { }\n')
    with pytest.raises(CaffeError, match=rf"^{junk}: "):
        load_caffemodel(junk)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(CaffeError, match="holds no layers"):
        load_caffemodel(empty)
    wrong = tmp_path / "wrong.caffemodel"  # a blob whose legacy shape disagrees with its data
    blob = pb.BlobProto(num=2, channels=1, height=1, width=1, data=[1.0]).SerializeToString()
    wrong.write_bytes(pb.NetParameter(layer=[pb.LayerParameter(name="x", blobs=[pb.BlobProto.FromString(blob)])])
                      .SerializeToString())
    with pytest.raises(CaffeError, match=r"shape \(2, 1, 1, 1\) holds 1 values"):
        load_caffemodel(wrong)
    state = (GOLDEN / "solver_step" / "snap_iter_7.solverstate").read_bytes()
    bad = tmp_path / "bad.solverstate"
    bad.write_bytes(state[:-10])
    with pytest.raises(CaffeError, match=rf"^{bad}: truncated or corrupt solverstate"):
        load_solverstate(bad)
    h5 = tmp_path / "s.solverstate.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(CaffeError, match="HDF5"):
        load_solverstate(h5)


def test_other_forks_layer_fields_do_not_matter(tmp_path):
    # DeepLab v2 wrote interp_param at 143 (BVLC's input_param) and other forks reuse other
    # numbers; only a layer's name, type and blobs are read.
    interp = _tag(1, 0) + _varint(65) + _tag(2, 0) + _varint(65)
    blob = pb.BlobProto(shape=pb.BlobShape(dim=[2]), data=[1.0, 2.0]).SerializeToString()
    layer = _ld(1, b"fc8_interp") + _ld(2, b"Interp") + _ld(143, interp) + _ld(7, blob)
    path = tmp_path / "v2fork.caffemodel"
    path.write_bytes(_ld(100, layer))
    (got,) = load_caffemodel(path)
    assert (got.name, got.type) == ("fc8_interp", "Interp")
    np.testing.assert_array_equal(got.blobs[0], [1.0, 2.0])


def test_hdf5_weights_round_trip_into_a_net(tmp_path):
    """Caffe's HDF5 layout (data/<layer>/<blob index>, diff/ alike) written and read back; a net
    copies from it by layer name as from a caffemodel (Caffe's CopyTrainedLayersFrom picks the
    format by the file's signature)."""
    import h5py
    from caffe.util.hdf5 import is_hdf5, load_hdf5, save_hdf5
    from caffe.net import Net

    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
    layer { name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_size: 1 } }
    """
    w = np.arange(4, dtype=np.float32).reshape(2, 2, 1, 1)
    b = np.array([5, 6], np.float32)
    path = tmp_path / "w.h5"
    save_hdf5(path, [("in", [], None), ("conv", [w, b], [w * 0, b * 0])])
    assert is_hdf5(path) and not is_hdf5(FIXTURES / "golden" / "layers" / "net.caffemodel")
    with h5py.File(path) as f:
        assert sorted(f["data"]) == ["conv", "in"] and sorted(f["data/conv"]) == ["0", "1"]
        assert f["data/conv/0"].dtype == np.float32 and f["diff/conv/1"].shape == (2,)
    layers = {lb.name: lb.blobs for lb in load_hdf5(path)}
    assert np.array_equal(layers["conv"][0], w) and layers["in"] == []
    net = Net(text, "TEST")
    report = net.copy_from(str(path))
    assert "conv" in report["copied"] and not report["skipped"]
    assert np.array_equal(net.layer("conv").blobs[1].detach().numpy(), b)
    with pytest.raises(CaffeError, match="repeat"):
        save_hdf5(tmp_path / "dup.h5", [("a", [], None), ("a", [], None)])
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 10)
    with pytest.raises(CaffeError, match="bad.h5"):
        load_hdf5(tmp_path / "bad.h5")
