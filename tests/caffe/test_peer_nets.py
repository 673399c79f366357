"""bench/peer_nets.py's V1 form of a deploy net (what `caffe time` of a V1-era build such as the
DeepLab fork reads): the engine's V1 reader, which follows Caffe's upgrade and the fork's
``hole``, must build the same net from it."""
import pytest
from google.protobuf import text_format

from bench import peer_nets
from caffe.net import Net
from caffe.prototxt import parse_net


@pytest.mark.parametrize("name", ["largefov", "narrow"])
def test_v1_form_builds_the_same_net(tmp_path, name):
    param = peer_nets.deploy_param(name, (65, 65))
    del param.layer[-1]                        # the fork build has no Interp; V1 has no Input layer
    text = text_format.MessageToString(peer_nets.v1_param(param))
    assert "layers {" in text and "layer {" not in text and "hole: 12" in text and "dilation" not in text
    assert 'input: "data"' in text
    path = tmp_path / "v1.prototxt"
    path.write_text(text)
    v1, v2 = Net(parse_net(str(path)), "TEST"), Net(param, "TEST")
    assert [(l.name, l.type) for l in v1.layers] == [(l.name, l.type) for l in v2.layers]
    assert v1.blob_shapes == v2.blob_shapes
    assert v1.layer("fc6").blobs[0].shape == v2.layer("fc6").blobs[0].shape


def test_v1_form_refuses_what_v1_cannot_say():
    param = peer_nets.deploy_param("narrow", (65, 65))
    conv = next(lp for lp in param.layer if lp.name == "fc6")
    conv.convolution_param.dilation[:] = [12, 6]
    with pytest.raises(ValueError, match="layer 'fc6': per-axis dilation"):
        peer_nets.v1_param(param)
    param = peer_nets.deploy_param("narrow", (65, 65))
    param.layer.add(name="bn", type="BatchNorm", bottom=["fc8_voc12"], top=["bn"])
    with pytest.raises(ValueError, match="layer 'bn': type BatchNorm has no V1 name"):
        peer_nets.v1_param(param)
