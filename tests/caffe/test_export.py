"""caffe export: nets exported to ONNX (and torch.export) agree with the engine.

Small random-weight versions of the nets the issue names (widths divided, small inputs) are
exported with caffe.export and run under onnxruntime and OpenCV 5's ONNX importer; every
output must equal the engine's to float32 round-off. The deploy transform, the naming of
ONNX values and weights, the plain nn.Module and the refusals are checked too.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from caffe import CaffeError
from caffe import export as ex
from caffe.net import Net
from caffe.prototxt import parse_net
from bench.peer_nets import randomize  # the one role-aware randomizer (bench_export and the peers bench use it)
from conftest import FIXTURES, REPO

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
cv2 = pytest.importorskip("cv2")

NETS = FIXTURES / "real_nets"
LARGEFOV = REPO / "prototxt" / "voc12" / "DeepLab-LargeFOV" / "test.prototxt"
CRFRNN = REPO / "prototxt" / "synthetic" / "LargeFOV-small-CRFRNN" / "test.prototxt"
MAPPING = {"DATA_ROOT": "x", "LIST_DIR": "x", "TEST_SET": "x", "FEATURE_DIR": "x", "NUM_LABELS": "21", "EXP": "x"}


def narrow(param, factor=16, keep=(21, 1000)):
    """Convolution/Deconvolution/InnerProduct widths above 21 divided by ``factor``."""
    for lp in param.layer:
        p = lp.inner_product_param if lp.type == "InnerProduct" else lp.convolution_param
        if lp.type in ("Convolution", "Deconvolution", "InnerProduct") and p.num_output > 21 \
                and p.num_output not in keep:
            p.num_output = max(p.num_output // factor, 2)
    return param


def set_input(param, shape):
    """The first Input layer's shape."""
    lp = next(lp for lp in param.layer if lp.type == "Input")
    del lp.input_param.shape[0].dim[:]
    lp.input_param.shape[0].dim.extend(shape)
    return param


@torch.no_grad()
def agree(net, tmp_path, inputs, other_sizes=()):
    """Export ``net`` to ONNX; onnxruntime and OpenCV give the engine's outputs (to float32
    round-off: 1e-4 of the output's largest magnitude). ``other_sizes``: inputs of other
    shapes the dynamic axes must also serve (onnxruntime). Returns the ONNX model."""
    path = tmp_path / "net.onnx"
    report = ex.export(net, onnx=path)
    model = onnx.load(path)
    assert model.opset_import[0].version >= 17
    assert [o.name for o in model.graph.output] == net.output_names == report["outputs"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reader = cv2.dnn.readNetFromONNX(str(path))
    for feed in [inputs, *other_sizes]:
        with torch.no_grad():
            want = net.forward({k: torch.from_numpy(v) for k, v in feed.items()})
        got = dict(zip(net.output_names, session.run(None, feed)))
        for name in net.output_names:
            ref = want[name].numpy()
            tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
            assert got[name].shape == ref.shape, name
            assert np.abs(got[name] - ref).max() <= tol, (name, float(np.abs(got[name] - ref).max()), tol)
        if feed is inputs:
            for k, v in feed.items():
                reader.setInput(v, k)
            outs = reader.forward(net.output_names)
            for name, out in zip(net.output_names, outs):
                ref = want[name].numpy()
                tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
                assert np.abs(out.reshape(ref.shape) - ref).max() <= tol, ("opencv", name)
    return model


def image(shape, seed=1):
    return (np.random.default_rng(seed).normal(0, 1, shape) * 40).astype(np.float32)


def test_deploy_of_the_release_largefov_test_net():
    d = ex.deploy(parse_net(LARGEFOV, MAPPING))
    # ImageSegData's crop_size 513 gives the Input; MatWrite goes, nothing else.
    assert d.inputs == {"data": (1, 3, 513, 513)}
    assert d.dropped == ["data (ImageSegData)", "fc8_mat (MatWrite)"]
    assert [lp.type for lp in d.param.layer][:2] == ["Input", "Convolution"]


def test_deploy_of_a_train_net_drops_labels_loss_and_accuracy():
    train = REPO / "prototxt" / "voc12" / "DeepLab-LargeFOV" / "train.prototxt"
    d = ex.deploy(parse_net(train, dict(MAPPING, TRAIN_SET="x", NUM_LABELS="21")), {"data": (1, 3, 321, 321)},
                  phase="TRAIN")
    types = {lp.type for lp in d.param.layer}
    assert not types & {"ImageSegData", "SoftmaxWithLoss", "SegAccuracy", "Accuracy"}
    assert d.inputs == {"data": (1, 3, 321, 321)}
    # the label shrink reads the dropped label: it goes too, and the deploy net builds
    assert any("Interp" in x for x in d.dropped) and any("SoftmaxWithLoss" in x for x in d.dropped)
    assert Net(d.param, "TEST").output_names == ["fc8_voc12"]


def test_largefov_deploy_exports_with_dynamic_batch_and_size(tmp_path):
    d = ex.deploy(narrow(parse_net(LARGEFOV, MAPPING)), {"data": (1, 3, 65, 65)})
    net = Net(d.param, "TEST")
    randomize(net)
    model = agree(net, tmp_path, {"data": image((1, 3, 65, 65))}, [{"data": image((2, 3, 97, 81))}])
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    # Caffe names: blobs as values (fc7 after its in-place ReLU and Dropout), weights by layer
    values = {o for n in model.graph.node for o in n.output}
    assert {"conv1_1", "pool1", "fc8_voc12", "fc8_interp"} <= values
    assert {"conv1_1.0", "conv1_1.1", "fc8_voc12.0"} <= {i.name for i in model.graph.initializer}
    assert any(n.op_type == "Resize" and any(a.s == b"align_corners" for a in n.attribute) for n in model.graph.node)


def test_fcn8s_crop_offsets(tmp_path):
    net = Net(set_input(narrow(parse_net(NETS / "fcn8s_voc.prototxt")), (1, 3, 64, 64)), "TEST")
    randomize(net)
    model = agree(net, tmp_path, {"data": image((1, 3, 64, 64))}, [{"data": image((1, 3, 80, 72))}])
    assert sum(n.op_type == "Slice" for n in model.graph.node) >= 3


def segnet_basic(shape):
    """SegNet-Basic: the Bayesian inference fixture without its Monte Carlo dropout, deployed."""
    param = parse_net(FIXTURES / "segnet" / "bayesian_segnet_basic_inference.prototxt")
    keep = [lp for lp in param.layer if lp.type != "Dropout"]
    del param.layer[:]
    param.layer.extend(keep)
    return ex.deploy(narrow(param, 8), {"data": shape}).param


def test_segnet_basic_upsample_with_indices(tmp_path):
    # H / 8 odd: upsample4's pad_out_h gives back pool3's height (40 -> 20, 10, 5, 3 -> 5)
    net = Net(segnet_basic((1, 3, 40, 48)), "TEST")
    randomize(net)
    model = agree(net, tmp_path, {"data": image((1, 3, 40, 48))}, [{"data": image((3, 3, 40, 48))}])
    # each value kept where the enlarged mask holds the position's index (pool windows tile)
    assert sum(n.op_type == "Where" for n in model.graph.node) == 4
    # the fork fixes the Upsample size at the first shape: spatial axes stay fixed, batch does not
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 40, 48]


def test_resnet50_batchnorm_scale(tmp_path):
    net = Net(set_input(narrow(parse_net(NETS / "resnet50.prototxt")), (1, 3, 224, 224)), "TEST")
    randomize(net)
    agree(net, tmp_path, {"data": image((1, 3, 224, 224))}, [{"data": image((2, 3, 224, 224))}])


def test_enet_prelu_dilated_asymmetric_grouped_deconv(tmp_path):
    net = Net(FIXTURES / "export" / "enet_small.prototxt", "TEST")
    randomize(net)
    # inputs of unit scale: the random net's logits stay small enough for its softmax not to saturate
    model = agree(net, tmp_path, {"data": image((1, 3, 64, 64)) / 40})
    ops = {n.op_type for n in model.graph.node}
    assert {"PRelu", "Where", "ConvTranspose"} <= ops


def test_dilation8_front_end_and_context(tmp_path):
    net = Net(set_input(narrow(parse_net(NETS / "dilation8_voc.prototxt")), (1, 3, 412, 412)), "TEST")
    randomize(net)
    agree(net, tmp_path, {"data": image((1, 3, 412, 412))})


def test_crfrnn_is_refused_naming_the_layer():
    d = ex.deploy(parse_net(CRFRNN, MAPPING), {"data": (1, 3, 65, 65)})
    net = Net(d.param, "TEST")
    with pytest.raises(CaffeError, match=r"layer 'inference1' \(MultiStageMeanfield\): its permutohedral") as e:
        ex.export_program(net)
    assert "\n" not in str(e.value)


def test_to_module_is_plain_and_keyed_by_caffe_names():
    net = Net(FIXTURES / "export" / "enet_small.prototxt", "TEST")
    randomize(net)
    module = ex.to_module(net)
    assert not any(type(m).__module__.startswith("caffe") for m in module.modules())
    state = module.state_dict()
    assert "initial_conv.0" in state and "bottleneck1_0_1_prelu.0" in state and "initial_bn.1" in state
    assert torch.equal(state["initial_conv.0"], net.layer("initial_conv").blobs[0])
    x = torch.from_numpy(image((2, 3, 64, 64)) / 40)
    with torch.no_grad():
        assert torch.allclose(module(x)[0], net.forward({"data": x})["prob"], atol=1e-6)


def test_torch_pt2_loads_without_caffe(tmp_path):
    net = Net(set_input(narrow(parse_net(NETS / "fcn8s_voc.prototxt")), (1, 3, 64, 64)), "TEST")
    randomize(net)
    ex.export(net, torch_path=tmp_path / "net.pt2")
    xs = [torch.from_numpy(image(shape)) for shape in ((1, 3, 64, 64), (2, 3, 72, 80))]
    torch.save(xs, tmp_path / "x.pt")
    code = ("import sys, torch; m = torch.export.load(sys.argv[1]).module(); xs = torch.load(sys.argv[2]); "
            "assert 'caffe' not in sys.modules; torch.save([m(x)[0] for x in xs], sys.argv[3])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "net.pt2"), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True, cwd=tmp_path)
    for x, y in zip(xs, torch.load(tmp_path / "y.pt")):
        with torch.no_grad():
            assert torch.allclose(y, net.forward({"data": x})["score"], atol=1e-4)


def test_refusals_name_every_layer_on_one_line():
    param = parse_net(LARGEFOV, MAPPING)
    keep = [lp for lp in param.layer if lp.type != "MatWrite"]
    del param.layer[:]
    param.layer.extend(keep)
    net = Net(param, "TEST")
    with pytest.raises(CaffeError) as e:
        ex.export_program(net)
    assert str(e.value).startswith("cannot export layer 'data' (ImageSegData): a data layer reads files")
    assert "\n" not in str(e.value)


def test_caffe_export_command(tmp_path):
    text = LARGEFOV.read_text()
    for k, v in MAPPING.items():
        text = text.replace("${" + k + "}", v)   # as run_pascal.sh fills the placeholders (sed)
    model = tmp_path / "test.prototxt"
    model.write_text(text)
    out = tmp_path / "largefov.onnx"

    def caffe(*args):
        return subprocess.run([sys.executable, "-m", "caffe.tool", "export", f"--model={model}", *args],
                              capture_output=True, text=True, cwd=tmp_path)
    proc = caffe("--deploy", "--shape=data:1,3,65,65", f"--onnx={out}")
    assert proc.returncode == 0, proc.stderr
    assert "Deploy: dropped data (ImageSegData), fc8_mat (MatWrite); Input data 1x3x65x65" in proc.stderr
    assert onnx.load(out).graph.output[0].name == "fc8_interp"
    proc = caffe(f"--onnx={out}")   # the test net as it is: its data layer cannot be exported
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "layer 'data' (ImageSegData)" in proc.stderr


def _golden_cases():
    from golden_cases import LAYER_CASES
    exportable = set(ex.exportable_types())
    return [c for c in LAYER_CASES if c.body.split('"')[1] in exportable and c.phase == "TEST" and not c.refused
            and not c.files and not c.feed and not c.learned and c.body.split('"')[1] != "Silence"]   # no tops


@pytest.mark.parametrize("case", _golden_cases(), ids=lambda c: c.name)
def test_every_exportable_type_agrees_on_its_golden_case(case, tmp_path):
    """Each layer configuration of the BVLC golden cases whose type is listed as exportable
    exports and runs on onnxruntime with the engine's tops."""
    from golden_cases import case_seed, make_input, net_text
    net = Net(net_text(case), "TEST")
    randomize(net, case_seed(case.name))
    rng = np.random.default_rng(case_seed(case.name))
    feed = {b: make_input(spec, rng) for b, spec in case.bottoms.items()}
    path = tmp_path / "layer.onnx"
    ex.export(net, onnx=path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(net.output_names, session.run(None, {k: v for k, v in feed.items()
                                                        if k in {i.name for i in session.get_inputs()}})))
    with torch.no_grad():
        want = net.forward({k: torch.from_numpy(v) for k, v in feed.items()})
    for name in net.output_names:
        ref = want[name].detach().numpy()
        assert got[name].shape == ref.shape
        assert np.abs(got[name] - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max())), name


def test_pycaffe_net_export(tmp_path):
    import caffe
    net = caffe.Net(str(FIXTURES / "export" / "enet_small.prototxt"), caffe.TEST)
    net.params["initial_conv"][0].data[...] *= 0.5   # a host-side edit reaches the export
    report = net.export(onnx=str(tmp_path / "enet.onnx"))
    assert report["outputs"] == ["prob"]
    weights = {i.name: i for i in onnx.load(tmp_path / "enet.onnx").graph.initializer}
    assert np.array_equal(onnx.numpy_helper.to_array(weights["initial_conv.0"]), net.params["initial_conv"][0].data)
    assert "initial_conv.0" in net.to_module().state_dict()


def test_readme_lists_the_exportable_types():
    import re
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- export types: python -m caffe.export -->\n(.*?)\n<!-- /export types -->", text, re.S)
    assert block and block.group(1) == ex.export_type_list(), "README's export list is stale: paste `python -m caffe.export`"
