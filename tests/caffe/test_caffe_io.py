"""caffe.io: proto <-> array conversions, images, Transformer; caffe.draw's dot text."""
from __future__ import annotations

import numpy as np
import pytest

import caffe
import caffe.io
from caffe.proto import caffe_pb2


def test_blobproto_roundtrip_and_legacy_shape():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    blob = caffe.io.array_to_blobproto(arr, diff=-arr)
    assert list(blob.shape.dim) == [2, 3]
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), arr)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), -arr)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=list(range(6)))
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    with pytest.raises(ValueError):
        caffe.io.blobproto_to_array(caffe_pb2.BlobProto(data=[1, 2]))
    vec = caffe.io.arraylist_to_blobprotovector_str([arr, arr[0]])
    assert [a.shape for a in caffe.io.blobprotovector_str_to_arraylist(vec)] == [(2, 3), (3,)]


def test_datum_uint8_float_and_label():
    img = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    d = caffe.io.array_to_datum(img, label=4)
    assert d.data == img.tobytes() and d.label == 4 and not d.float_data
    np.testing.assert_array_equal(caffe.io.datum_to_array(d), img)
    f = caffe.io.array_to_datum(img.astype(np.float64) / 2)
    assert not f.HasField("label")
    np.testing.assert_array_equal(caffe.io.datum_to_array(f), img / 2)
    with pytest.raises(ValueError):
        caffe.io.array_to_datum(np.zeros((2, 2)))


def test_load_resize_oversample(tmp_path):
    import cv2
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    path = str(tmp_path / "red.png")
    cv2.imwrite(path, bgr)
    img = caffe.io.load_image(path)
    assert img.shape == (4, 6, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img[0, 0], [1, 0, 0])  # RGB in [0, 1]
    assert caffe.io.load_image(path, color=False).shape == (4, 6, 1)
    ramp = np.tile(np.array([0, 1], np.float32)[None, :, None], (2, 1, 5))
    big = caffe.io.resize_image(ramp, (2, 4))
    assert big.shape == (2, 4, 5)
    np.testing.assert_allclose(big[0, :, 0], [0, 1 / 3, 2 / 3, 1], rtol=1e-6)  # K=5: ndimage.zoom, corners aligned
    crops = caffe.io.oversample([np.arange(16, dtype=np.float32).reshape(4, 4, 1)], (2, 2))
    assert crops.shape == (10, 2, 2, 1)
    np.testing.assert_array_equal(crops[0, :, :, 0], [[0, 1], [4, 5]])
    np.testing.assert_array_equal(crops[4, :, :, 0], [[5, 6], [9, 10]])  # centre
    np.testing.assert_array_equal(crops[5, :, :, 0], [[1, 0], [5, 4]])  # mirrored first corner


def test_resize_image_as_skimage_mode_constant():
    """K = 1 or 3: BVLC scales to [0, 1], resizes with skimage (mode='constant': pixel centres
    aligned, outside the image 0) and scales back. 2 -> 4 samples at -0.25, 0.25, 0.75, 1.25:
    the outer ones take 1/4 of the constant, i.e. of the image's minimum once scaled back."""
    im = np.array([[2, 4], [2, 4]], np.float32)[..., None]
    edge = 2 + 2 * 0.75 * np.array([0, 0.25, 0.75, 0.75])     # a quarter of each border row is the 0 outside
    inner = 2 + 2 * np.array([0, 0.25, 0.75, 0.75])
    want = np.stack([edge, inner, inner, edge])
    for k in (1, 3):
        out = caffe.io.resize_image(np.repeat(im, k, axis=2), (4, 4))
        assert out.shape == (4, 4, k) and out.dtype == np.float32
        for c in range(k):
            np.testing.assert_allclose(out[..., c], want, rtol=1e-6)
    down = caffe.io.resize_image(np.arange(16, dtype=np.float32).reshape(4, 4, 1), (2, 2))
    np.testing.assert_allclose(down[..., 0], [[2.5, 4.5], [10.5, 12.5]], rtol=1e-6)   # samples at 0.5, 2.5
    near = caffe.io.resize_image(np.arange(4, dtype=np.float32).reshape(2, 2, 1), (4, 4), interp_order=0)
    np.testing.assert_array_equal(near[..., 0], [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    flat = caffe.io.resize_image(np.full((3, 3, 3), 7, np.float32), (5, 2))
    assert flat.shape == (5, 2, 3) and (flat == 7).all()


def test_transformer_preprocess_and_deprocess():
    t = caffe.io.Transformer({"data": (1, 3, 2, 2)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10, 20, 30]))
    t.set_input_scale("data", 0.5)
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[..., 0] = 1.0  # red
    x = t.preprocess("data", rgb)
    assert x.shape == (3, 2, 2)
    np.testing.assert_allclose(x[:, 0, 0], [(0 - 10) * 0.5, (0 - 20) * 0.5, (255 - 30) * 0.5])  # BGR
    np.testing.assert_allclose(t.deprocess("data", x), rgb, atol=1e-6)
    with pytest.raises(ValueError):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(ValueError, match="Mean shape incompatible with input shape"):
        t.set_mean("data", np.zeros((3, 4, 4)))     # BVLC raises; it does not resize the mean
    t.set_mean("data", np.zeros((3, 2, 2)))
    with pytest.raises(KeyError):
        t.preprocess("other", rgb)


def test_draw_dot_text():
    import caffe.draw
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="conv", type="Convolution", bottom=["data"], top=["conv"])
    net.layer.add(name="drop", type="Dropout", bottom=["conv"], top=["conv"]).include.add(phase=caffe.TRAIN)
    text = caffe.draw.draw_net(net, "TB", ext="dot").decode()
    assert "rankdir=TB" in text and '"blob:data" -> "layer0:conv"' in text and "layer1:drop" in text
    assert "layer1:drop" not in caffe.draw.net_to_dot(net, phase=caffe.TEST)
