"""Nets written the way the DeepLab release wrote them (V1 ``layers {}``, ``${VAR}``, a loss
layer without a top, the fork's IMAGE_SEG_DATA / INTERP / MAT_WRITE / SEG_ACCURACY, MSc's
repeated ``fc_fusion`` name) load unchanged and build the shapes the release intends, in both
phases. The nets here are our own, with the release's geometry and narrow layers."""
import pytest
import torch

from caffe import CaffeError
from caffe.net import Net


def conv(name, bottom, n, k=3, pad=1, hole=None, lr=True):
    hole = f"    hole: {hole}\n" if hole else ""
    rates = "  blobs_lr: 1\n  blobs_lr: 2\n  weight_decay: 1\n  weight_decay: 0\n" if lr else ""
    return (f'layers {{\n  bottom: "{bottom}"\n  top: "{name}"\n  name: "{name}"\n  type: CONVOLUTION\n{rates}'
            f'  convolution_param {{\n    num_output: {n}\n    pad: {pad}\n{hole}    kernel_size: {k}\n'
            f'    weight_filler {{ type: "gaussian" std: 0.1 }}\n  }}\n}}\n'
            f'layers {{\n  bottom: "{name}"\n  top: "{name}"\n  name: "relu_{name}"\n  type: RELU\n}}\n')


def pool(name, bottom, stride, kind="MAX"):
    return (f'layers {{\n  bottom: "{bottom}"\n  top: "{name}"\n  name: "{name}"\n  type: POOLING\n'
            f'  pooling_param {{\n    pool: {kind}\n    kernel_size: 3\n    stride: {stride}\n    pad: 1\n  }}\n}}\n')


def data(phase, crop, batch, tops=("data", "label")):
    top = "".join(f'  top: "{t}"\n' for t in tops)
    return (f'layers {{\n  name: "data"\n  type: IMAGE_SEG_DATA\n{top}'
            f'  image_data_param {{\n    root_folder: "${{DATA_ROOT}}"\n'
            f'    source: "${{LIST_DIR}}/${{{"TRAIN" if phase == "TRAIN" else "TEST"}_SET}}.txt"\n'
            f'    batch_size: {batch}\n  }}\n  transform_param {{\n    mean_value: 104.008\n'
            f'    mean_value: 116.669\n    mean_value: 122.675\n    crop_size: {crop}\n  }}\n'
            f'  include: {{ phase: {phase} }}\n}}\n')


def trunk(lr=True):
    """VGG-16's LargeFOV geometry: pools 3/2/1 at stride 2, 2, 2, 1, 1; conv5 hole 2; fc6 hole 12."""
    t = conv("conv1_1", "data", 4, lr=lr) + pool("pool1", "conv1_1", 2)
    t += conv("conv2_1", "pool1", 4, lr=lr) + pool("pool2", "conv2_1", 2)
    t += conv("conv3_1", "pool2", 4, lr=lr) + pool("pool3", "conv3_1", 2)
    t += conv("conv4_1", "pool3", 4, lr=lr) + pool("pool4", "conv4_1", 1)
    t += conv("conv5_1", "pool4", 4, pad=2, hole=2, lr=lr) + pool("pool5", "conv5_1", 1)
    t += pool("pool5a", "pool5", 1, "AVE")
    t += conv("fc6", "pool5a", 8, pad=12, hole=12, lr=lr)
    t += 'layers {\n  bottom: "fc6"\n  top: "fc6"\n  name: "drop6"\n  type: DROPOUT\n  dropout_param { dropout_ratio: 0.5 }\n}\n'
    t += conv("fc7", "fc6", 8, k=1, pad=0, lr=lr)
    t += ('layers {\n  bottom: "fc7"\n  top: "fc8_${EXP}"\n  name: "fc8_${EXP}"\n  type: CONVOLUTION\n'
          '  convolution_param {\n    num_output: ${NUM_LABELS}\n    kernel_size: 1\n'
          '    weight_filler { type: "gaussian" std: 0.01 }\n  }\n}\n')
    return t


def largefov_train(crop=321, batch=30):
    return ('name: "${NET_ID}"\n' + data("TRAIN", crop, batch) + trunk() +
            'layers {\n  bottom: "label"\n  top: "label_shrink"\n  name: "label_shrink"\n  type: INTERP\n'
            '  interp_param {\n    shrink_factor: 8\n    pad_beg: 0\n    pad_end: 0\n  }\n}\n'
            'layers {\n  name: "loss"\n  type: SOFTMAX_LOSS\n  bottom: "fc8_${EXP}"\n  bottom: "label_shrink"\n'
            '  softmaxloss_param {\n    ignore_label: 255\n  }\n  include: { phase: TRAIN }\n}\n'
            'layers {\n  name: "accuracy"\n  type: SEG_ACCURACY\n  bottom: "fc8_${EXP}"\n  bottom: "label_shrink"\n'
            '  top: "accuracy"\n  seg_accuracy_param {\n    ignore_label: 255\n  }\n}\n')


def largefov_test(crop=513):
    return ('name: "${NET_ID}"\n' + data("TEST", crop, 1) + trunk(lr=False) +
            'layers {\n  bottom: "fc8_${EXP}"\n  top: "fc8_interp"\n  name: "fc8_interp"\n  type: INTERP\n'
            '  interp_param {\n    zoom_factor: 8\n  }\n}\n'
            'layers {\n  name: "fc8_mat"\n  type: MAT_WRITE\n  bottom: "fc8_interp"\n  mat_write_param {\n'
            '    prefix: "${FEATURE_DIR}/${TEST_SET}/fc8/"\n    source: "${LIST_DIR}/${TEST_SET}_id.txt"\n'
            '    strip: 0\n    period: 1\n  }\n  include: { phase: TEST }\n}\n'
            'layers {\n  bottom: "label"\n  name: "silence"\n  type: SILENCE\n  include: { phase: TEST }\n}\n')


def msc_test(crop=513):
    """The MSc head: the input and each pool's interpolated scores summed into fc_fusion, and
    the MAT_WRITE layer after it also called fc_fusion, as the release's MSc test net has it."""
    t = largefov_test(crop).split('layers {\n  name: "fc8_mat"')[0]
    heads = []
    for src in ("data", "pool1", "pool2", "pool3", "pool4"):
        zoom = {"data": None, "pool1": 2, "pool2": 4, "pool3": 8, "pool4": 8}[src]
        t += conv(f"{src}_ms", src, "${NUM_LABELS}", k=1, pad=0, lr=False).split("layers {\n  bottom: \"" + f"{src}_ms\"")[0]
        if zoom:
            t += (f'layers {{\n  bottom: "{src}_ms"\n  top: "{src}_interp"\n  name: "{src}_interp"\n  type: INTERP\n'
                  f'  interp_param {{\n    zoom_factor: {zoom}\n  }}\n}}\n')
            heads.append(f"{src}_interp")
        else:
            heads.append("data_ms")
    bottoms = "".join(f'  bottom: "{b}"\n' for b in heads + ["fc8_interp"])
    t += (f'# Fusion layer\nlayers {{\n{bottoms}  top: "fc_fusion"\n  name: "fc_fusion"\n  type: ELTWISE\n'
          '  eltwise_param {\n    operation: SUM\n  }\n}\n'
          'layers {\n  name: "fc_fusion"\n  type: MAT_WRITE\n  bottom: "fc_fusion"\n  mat_write_param {\n'
          '    prefix: "${FEATURE_DIR}/${TEST_SET}/fc8/"\n    source: "${LIST_DIR}/${TEST_SET}_id.txt"\n'
          '    strip: 0\n    period: 1\n  }\n  include: { phase: TEST }\n}\n')
    return t


@pytest.fixture
def mapping(tmp_path):
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "val_id.txt").write_text("a\nb\n")
    return {"NET_ID": "largefov", "EXP": "voc12", "NUM_LABELS": "21", "DATA_ROOT": str(tmp_path),
            "LIST_DIR": str(tmp_path / "list"), "TRAIN_SET": "train_aug", "TEST_SET": "val",
            "FEATURE_DIR": str(tmp_path / "features")}


def test_largefov_train_net_shrinks_the_label_to_41_at_crop_321(tmp_path, mapping):
    path = tmp_path / "train.prototxt"
    path.write_text(largefov_train())
    net = Net(str(path), "TRAIN", mapping)
    assert net.name == "largefov"
    shapes = net.blob_shapes
    assert shapes["data"] == (30, 3, 321, 321) and shapes["label"] == (30, 1, 321, 321)
    assert [shapes[p][2] for p in ("pool1", "pool2", "pool3", "pool4", "pool5", "pool5a")] == [161, 81, 41, 41, 41, 41]
    assert shapes["fc8_voc12"] == (30, 21, 41, 41) and shapes["label_shrink"] == (30, 1, 41, 41)
    loss = net.layer("loss")
    # both anonymous tops are Caffe's "(automatic)"; the net keys the second one apart
    assert net.layer("data").top_names == ["data", "label", "(automatic)"]     # ExactNumTopBlobs 3
    assert loss.top_names == ["(automatic)#2"] and net.loss_weights == {"(automatic)#2": 1.0}
    assert net.blob_names.count("(automatic)") == 2
    assert net.output_names == ["accuracy"]
    assert [p.lr_mult for p in net.learnable_params()][:2] == [1.0, 2.0]


def test_largefov_train_net_runs_one_step_at_a_small_exact_crop(tmp_path, mapping):
    net = Net(largefov_train(crop=33, batch=2), "TRAIN", mapping)          # 33 = 8 * 4 + 1
    assert net.blob_shapes["label_shrink"] == (2, 1, 5, 5) == net.blob_shapes["fc8_voc12"][:1] + (1, 5, 5)
    label = torch.randint(0, 21, (2, 1, 33, 33)).float()
    label[:, :, :4] = 255
    blobs = net({"data": torch.randn(2, 3, 33, 33), "label": label})
    loss = net.loss(blobs)
    loss.backward()
    assert torch.isfinite(loss) and net.layer("conv1_1").blobs[0].grad is not None


def test_largefov_train_net_at_a_blending_crop_is_refused_with_crops_that_work(mapping):
    with pytest.raises(CaffeError, match=r"label_shrink.*not an exact subsampling.*8k \+ 1, e\.g\. 313 or 321"):
        Net(largefov_train(crop=320), "TRAIN", mapping)


def test_largefov_test_net_builds_513_scores(tmp_path, mapping):
    net = Net(largefov_test(), "TEST", mapping)
    assert net.blob_shapes["fc8_voc12"] == (1, 21, 65, 65) and net.blob_shapes["fc8_interp"] == (1, 21, 513, 513)
    assert "loss" not in net.layer_names and net.output_names == []
    # the train file has no data layer in TEST, as in Caffe
    with pytest.raises(CaffeError, match=r"bottom 'data' is not produced"):
        Net(largefov_train(), "TEST", mapping)


def test_msc_test_net_with_two_layers_named_fc_fusion(tmp_path, mapping):
    path = tmp_path / "test.prototxt"
    path.write_text(msc_test(crop=33))
    net = Net(str(path), "TEST", mapping)
    assert net.layer_names.count("fc_fusion") == 2
    assert [l.type for l in net.layers if l.name == "fc_fusion"] == ["Eltwise", "MatWrite"]
    assert net.layer("fc_fusion").type == "MatWrite"                    # layer_by_name: the last
    assert net.blob_shapes["fc_fusion"] == (1, 21, 33, 33)
    for layer in net.layers:
        if layer.type == "MatWrite":
            layer.format = "npy"
    with torch.no_grad():
        net({"data": torch.randn(1, 3, 33, 33), "label": torch.zeros(1, 1, 33, 33)})
    assert sorted(p.name for p in (tmp_path / "features" / "val" / "fc8").iterdir()) == ["a_blob_0.npy"]
