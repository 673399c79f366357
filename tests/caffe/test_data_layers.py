"""BVLC's data layers (caffe/data/sources.py, caffe/util/db.py, caffe/data/window_data.py,
caffe/layer/data.py, caffe/layer/output.py): Data (LMDB, LevelDB, Datum decoding),
ImageData, HDF5Data, HDF5Output, MemoryData with pycaffe's set_input_arrays, WindowData,
and Caffe's DataTransformer, on tiny generated inputs with hand-computed expectations."""
import cv2
import h5py
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from caffe import CaffeError
from caffe.data.base import CaffeTransform
from caffe.data import layer_source
from caffe.data.stream import NetFeed, Stream
from caffe.layer import REGISTRY
from caffe.net import Net
from caffe.proto import caffe_pb2


def datum(chw=None, label=0, floats=None, encoded=None) -> bytes:
    d = caffe_pb2.Datum(label=label)
    if encoded is not None:
        d.data, d.encoded = encoded, True
    elif floats is not None:
        d.channels, d.height, d.width = floats.shape
        d.float_data.extend(floats.ravel().tolist())
    else:
        d.channels, d.height, d.width = chw.shape
        d.data = chw.astype(np.uint8).tobytes()
    return d.SerializeToString()


def write_lmdb(path, records: dict) -> str:
    import lmdb
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for k, v in records.items():
            txn.put(k, v)
    env.close()
    return str(path)


def records(n=3, shape=(1, 2, 3)) -> dict:
    """Record i: every byte 10 * i + position, label 100 + i; written in reverse key order."""
    size = int(np.prod(shape))
    return {f"{i:03d}".encode(): datum((10 * i + np.arange(size)).reshape(shape), 100 + i) for i in reversed(range(n))}


def data_net(layer: str, phase="TEST") -> Net:
    return Net(f'name: "n" layer {{ name: "d" {layer} }}', phase)


def feed_batches(net, count, **kw):
    feed = NetFeed(net, **kw)
    try:
        return [{k: v.numpy() for k, v in feed(b).items()} for b in range(count)]
    finally:
        feed.close()


# ---------------------------------------------------------------- Data
def test_data_lmdb_reads_records_in_key_order_wrapping_around(tmp_path):
    db = write_lmdb(tmp_path / "db", records())
    net = data_net(f'type: "Data" top: "data" top: "label" data_param {{ source: "{db}" backend: LMDB batch_size: 2 }}')
    assert net.blob_shapes["data"] == (2, 1, 2, 3) and net.blob_shapes["label"] == (2,)
    b = feed_batches(net, 2)
    assert b[0]["label"].tolist() == [100, 101] and b[1]["label"].tolist() == [102, 100]   # wraps
    assert b[0]["data"][1].ravel().tolist() == list(range(10, 16))
    assert b[1]["data"][0].ravel().tolist() == list(range(20, 26))


def test_data_leveldb_and_a_data_only_top(tmp_path):
    plyvel = pytest.importorskip("plyvel")
    db = plyvel.DB(str(tmp_path / "ldb"), create_if_missing=True)
    for k, v in records().items():
        db.put(k, v)
    db.close()
    net = data_net(f'type: "Data" top: "data" data_param {{ source: "{tmp_path / "ldb"}" batch_size: 3 }}')  # LEVELDB default
    assert list(net.blob_shapes) == ["data"]
    (b,) = feed_batches(net, 1)
    assert b["data"][:, 0, 0, 0].tolist() == [0, 10, 20]


def test_datum_encoded_png_float_data_and_force_gray(tmp_path):
    bgr = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)          # 1 x 2 pixels, BGR
    png = cv2.imencode(".png", bgr)[1].tobytes()
    floats = np.array([[[0.5, -1.5]]], np.float32)
    db = write_lmdb(tmp_path / "db", {b"a": datum(encoded=png, label=7), b"b": datum(floats=floats, label=8)})
    src = layer_source(data_net(f'type: "Data" top: "d" top: "l" data_param {{ source: "{db}" backend: LMDB '
                                f'batch_size: 1 }}').layers[0], "TEST")
    data, label, _ = src[0]
    assert data.shape == (3, 1, 2) and data[:, 0, 1].tolist() == [40, 50, 60] and label == 7
    assert src[1][0].tolist() == [[[0.5, -1.5]]] and src[1][1] == 8
    gray = layer_source(data_net(f'type: "Data" top: "d" data_param {{ source: "{db}" backend: LMDB batch_size: 1 }} '
                                 'transform_param { force_gray: true }').layers[0], "TEST")
    expected = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)   # DecodeDatumToCVMat(datum, false)
    assert gray[0][0].shape == (1, 1, 2) and gray[0][0][0].tolist() == expected.tolist()


def test_data_errors_name_the_layer(tmp_path):
    with pytest.raises(CaffeError, match=r"layer 'd' \(Data\): data_param.source .* is not a LMDB folder"):
        data_net(f'type: "Data" top: "x" data_param {{ source: "{tmp_path / "none"}" backend: LMDB batch_size: 1 }}')
    bad = write_lmdb(tmp_path / "bad", {b"a": datum(np.zeros((1, 2, 2)), 0)[:-3] + b"\xff\xff\xff"})
    with pytest.raises(CaffeError, match=r"layer 'd' \(Data\)"):
        data_net(f'type: "Data" top: "x" data_param {{ source: "{bad}" backend: LMDB batch_size: 1 }}')
    db = write_lmdb(tmp_path / "db", records())
    with pytest.raises(CaffeError, match="input 2x3 is smaller than crop_size 3"):
        data_net(f'type: "Data" top: "x" data_param {{ source: "{db}" backend: LMDB batch_size: 1 }} '
                 'transform_param { crop_size: 3 }')
    with pytest.raises(CaffeError, match="batch_size must be positive"):
        data_net(f'type: "Data" top: "x" data_param {{ source: "{db}" backend: LMDB }}')


def test_data_shards_over_ranks_and_workers_read_the_same(tmp_path):
    db = write_lmdb(tmp_path / "db", records(5))
    one = data_net(f'type: "Data" top: "x" top: "y" data_param {{ source: "{db}" backend: LMDB batch_size: 2 }}')
    half = data_net(f'type: "Data" top: "x" top: "y" data_param {{ source: "{db}" backend: LMDB batch_size: 1 }}')
    full = feed_batches(one, 2, workers=1)
    ranks = [feed_batches(half, 2, rank=r, world=2) for r in range(2)]
    for b in range(2):
        assert [ranks[0][b]["y"][0], ranks[1][b]["y"][0]] == full[b]["y"].tolist()
    assert [x["y"].tolist() for x in full] == [[100, 101], [102, 103]]


# ---------------------------------------------------------------- the transform
def transform(text, train=False):
    tp = text_format.Parse(text, caffe_pb2.TransformationParameter())
    return CaffeTransform(tp, train, "layer 't' (Data)")


def test_transform_crop_mean_scale_mirror_by_hand(tmp_path):
    img = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    rng = np.random.default_rng(0)
    out = transform("crop_size: 2 mean_value: 1 mean_value: 2 scale: 0.5")(img, rng)
    # TEST: centred crop rows/cols 1..2; (pixel - mean[c]) * scale
    assert out.tolist() == [[[2.0, 2.5], [4.0, 4.5]], [[9.5, 10.0], [11.5, 12.0]]]
    mirrored = transform("mirror: true")
    seen = set()
    for seed in range(16):
        o = mirrored(img, np.random.default_rng(seed))
        seen.add("same" if (o == img).all() else "flipped" if (o == img[:, :, ::-1]).all() else "other")
    assert seen == {"same", "flipped"}
    offsets = set()
    t = transform("crop_size: 3", train=True)
    for seed in range(40):
        o = t(img, np.random.default_rng(seed))
        offsets.add((int(o[0, 0, 0]) // 4, int(o[0, 0, 0]) % 4))   # (row, col) of the crop's corner
    assert offsets == {(0, 0), (0, 1), (1, 0), (1, 1)}               # TRAIN: every offset, none out of range
    mean = caffe_pb2.BlobProto(num=1, channels=2, height=4, width=4)
    mean.data.extend((np.ones((2, 4, 4)) * np.array([1, 3])[:, None, None] + np.arange(16).reshape(4, 4)).ravel())
    (tmp_path / "mean.binaryproto").write_bytes(mean.SerializeToString())
    o = transform(f'crop_size: 2 mean_file: "{tmp_path / "mean.binaryproto"}"')(img, rng)
    assert o.tolist() == [[[-1.0] * 2] * 2, [[13.0] * 2] * 2]      # the mean is cropped with the image
    with pytest.raises(CaffeError, match="cannot specify mean_file and mean_value"):
        transform(f'mean_file: "{tmp_path / "mean.binaryproto"}" mean_value: 1')
    with pytest.raises(CaffeError, match="mean_file is 2x4x4 but the data is 2x5x5"):
        transform(f'mean_file: "{tmp_path / "mean.binaryproto"}"')(np.zeros((2, 5, 5), np.float32), rng)
    with pytest.raises(CaffeError, match="either 1 mean_value or as many as channels: 2"):
        transform("mean_value: 1 mean_value: 2 mean_value: 3")(img, rng)


# ---------------------------------------------------------------- ImageData
def image_list(tmp_path, n=3, size=(3, 4)):
    lines = []
    for i in range(n):
        img = np.full(size + (3,), 10 * i, np.uint8)
        img[..., 2] = 200 + i                                   # red channel (BGR order: last)
        cv2.imwrite(str(tmp_path / f"im{i}.png"), img)
        lines.append(f"im{i}.png {i + 5}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.txt"


def test_image_data_reads_the_list_in_order_resized_and_grey(tmp_path):
    lst = image_list(tmp_path)
    net = data_net(f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{lst}" '
                   f'root_folder: "{tmp_path}/" batch_size: 2 }}')
    assert net.blob_shapes["data"] == (2, 3, 3, 4) and net.blob_shapes["label"] == (2,)
    b = feed_batches(net, 2)
    assert b[0]["label"].tolist() == [5, 6] and b[1]["label"].tolist() == [7, 5]
    assert b[0]["data"][1, :, 0, 0].tolist() == [10, 10, 201]
    small = data_net(f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{lst}" '
                     f'root_folder: "{tmp_path}/" batch_size: 1 new_height: 2 new_width: 5 is_color: false }}')
    assert small.blob_shapes["data"] == (1, 1, 2, 5)
    grey = int(cv2.imread(str(tmp_path / "im0.png"), cv2.IMREAD_GRAYSCALE)[0, 0])   # a constant image stays so
    assert feed_batches(small, 1)[0]["data"].ravel().tolist() == [grey] * 10


def test_image_data_names_may_hold_spaces_as_in_bvlc(tmp_path):
    """image_data_layer.cpp splits each line at its last space: the name is what precedes it."""
    image_list(tmp_path, n=1)
    (tmp_path / "im0.png").rename(tmp_path / "my image 0.png")
    (tmp_path / "spaces.txt").write_text("my image 0.png 7\n")
    net = data_net(f'type: "ImageData" top: "d" top: "l" image_data_param {{ source: "{tmp_path / "spaces.txt"}" '
                   f'root_folder: "{tmp_path}/" batch_size: 1 }}')
    assert feed_batches(net, 1)[0]["l"].tolist() == [7]


def test_image_data_shuffle_skip_and_errors(tmp_path):
    lst = image_list(tmp_path, n=5)
    layer = ('type: "ImageData" top: "d" top: "l" image_data_param {{ source: "{}" root_folder: "{}/" batch_size: 5 '
             '{} }}')
    shuffled = data_net(layer.format(lst, tmp_path, "shuffle: true"), "TRAIN")
    epochs = [b["l"].tolist() for b in feed_batches(shuffled, 3, seed=3)]
    assert all(sorted(e) == [5, 6, 7, 8, 9] for e in epochs) and len({tuple(e) for e in epochs}) > 1
    assert [b["l"].tolist() for b in feed_batches(shuffled, 3, seed=3)] == epochs    # a function of the seed
    skipped = layer_source(data_net(layer.format(lst, tmp_path, "rand_skip: 5")).layers[0], "TEST", seed=1)
    firsts = [skipped[p][1] for p in range(6)]
    assert firsts == [5 + (skipped.item_index.skip + p) % 5 for p in range(6)]                 # skip once, then wrap to 0
    (tmp_path / "bad.txt").write_text("im0.png cat\n")
    with pytest.raises(CaffeError, match=r"layer 'd' \(ImageData\): .*bad.txt:1: the label must be an integer"):
        data_net(layer.format(tmp_path / "bad.txt", tmp_path, ""))
    (tmp_path / "missing.txt").write_text("nope.png 1\n")
    with pytest.raises(CaffeError, match=r"missing.txt:1: .*nope.png does not exist"):
        data_net(layer.format(tmp_path / "missing.txt", tmp_path, ""))
    (tmp_path / "nolabel.txt").write_text("im0.png\n")
    assert layer_source(data_net(layer.format(tmp_path / "nolabel.txt", tmp_path, "")).layers[0], "TEST")[0][1] == 0


# ---------------------------------------------------------------- HDF5Data / HDF5Output
def h5(path, rows, first):
    with h5py.File(path, "w") as f:
        f["data"] = (first + np.arange(rows)).reshape(rows, 1).repeat(2, 1).astype(np.float64)
        f["label"] = (first + np.arange(rows)).astype(np.int32)
    return str(path)


def test_hdf5_data_reads_rows_across_files_and_wraps(tmp_path):
    files = [h5(tmp_path / "a.h5", 3, 0), h5(tmp_path / "b.h5", 2, 10)]
    (tmp_path / "list.txt").write_text(" ".join(files) + "\n")
    layer = ('type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "' + str(tmp_path / "list.txt")
             + '" batch_size: 2 {} }}')
    net = data_net(layer.format(""))
    assert net.blob_shapes == {"data": (2, 2), "label": (2,)}
    got = [b["label"].tolist() for b in feed_batches(net, 4)]
    assert got == [[0, 1], [2, 10], [11, 0], [1, 2]]
    assert [b["label"].tolist() for b in feed_batches(net, 4, workers=1)] == got     # a worker process reads the same
    assert feed_batches(net, 1)[0]["data"].tolist() == [[0, 0], [1, 1]]
    shuffled = data_net(layer.format("shuffle: true"), "TRAIN")
    rows = sum((b["label"].tolist() for b in feed_batches(shuffled, 5, seed=4)), [])
    first, second = rows[:5], rows[5:]
    for epoch in (first, second):
        assert sorted(epoch) == [0, 1, 2, 10, 11]
        runs = [v >= 10 for v in epoch]                             # each file's rows stay together
        assert runs in ([False] * 3 + [True] * 2, [True] * 2 + [False] * 3)
    with pytest.raises(CaffeError, match=r"failed to find HDF5 dataset 'other'"):
        data_net(f'type: "HDF5Data" top: "other" hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 1 }}')
    with pytest.raises(CaffeError, match="does not transform data"):
        data_net(layer.format("") + " transform_param { scale: 2 }")


def test_hdf5_output_writes_data_and_label_once(tmp_path):
    out = tmp_path / "sub" / "out.h5"
    text = ('name: "n" layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } '
            'shape { dim: 2 } } }\n'
            f'layer {{ name: "w" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param {{ file_name: "{out}" }} }}')
    net = Net(text, "TEST")
    x, y = torch.arange(6.0).reshape(2, 3), torch.tensor([4.0, 5.0])
    net(x=x, y=y)
    with h5py.File(out) as f:
        assert f["data"].shape == (2, 3, 1, 1) and f["data"].dtype == np.float32
        assert f["data"][:, :, 0, 0].tolist() == x.tolist() and f["label"][:].ravel().tolist() == [4, 5]
        assert f["label"].shape == (2, 1, 1, 1)
    with pytest.raises(CaffeError, match=r"layer 'w' \(HDF5Output\): .* one batch"):
        net(x=x, y=y)


# ---------------------------------------------------------------- MemoryData
MEMORY = ('name: "m" layer { name: "md" type: "MemoryData" top: "data" top: "label" '
          'memory_data_param { batch_size: 2 channels: 1 height: 1 width: 2 } }\n'
          'layer { name: "p" type: "Power" bottom: "data" top: "twice" power_param { scale: 2 } }\n')


def test_memory_data_steps_through_set_input_arrays(tmp_path):
    path = tmp_path / "m.prototxt"
    path.write_text(MEMORY)
    net = caffe.Net(str(path), caffe.TEST)
    assert net.blobs["data"].data.shape == (2, 1, 1, 2) and net.blobs["label"].data.shape == (2,)
    with pytest.raises(CaffeError, match="MemoryDataLayer needs to be initialized"):
        net.forward()
    data = np.arange(8, dtype=np.float32).reshape(4, 1, 1, 2)
    net.set_input_arrays(data, np.array([7, 8, 9, 10], np.float32))
    seen = []
    for _ in range(3):
        out = net.forward()
        seen.append((net.blobs["label"].data.ravel().tolist(), out["twice"].ravel().tolist()))
    assert seen == [([7, 8], [0, 2, 4, 6]), ([9, 10], [8, 10, 12, 14]), ([7, 8], [0, 2, 4, 6])]   # pos wraps
    assert net.blobs["label"].data.shape == (2, 1, 1, 1)             # Caffe reshapes the label top on forward
    for bad, message in [((data[:3], np.zeros(3, np.float32)), "multiple of batch size"),
                         ((data.astype(np.float64), np.zeros(4, np.float32)), "data array must be float32"),
                         ((np.ascontiguousarray(data[..., :1]), np.zeros(4, np.float32)), "data array has wrong width"),
                         ((data, np.zeros(2, np.float32)), "same first dimension"),
                         ((np.asfortranarray(data.reshape(4, 2)).reshape(4, 1, 1, 2, order="F"),
                           np.zeros(4, np.float32)), "must be C contiguous")]:
        with pytest.raises(CaffeError, match=message):
            net.set_input_arrays(*bad)
    with pytest.raises(CaffeError, match="MemoryData holds the arrays given to pycaffe"):
        NetFeed(Net(MEMORY, "TRAIN"))


# ---------------------------------------------------------------- WindowData
def window_setup(tmp_path, windows, extra="", transform="crop_size: 4"):
    img = (np.arange(16).reshape(4, 4, 1) * np.array([1, 2, 3])).astype(np.uint8)   # B = v, G = 2v, R = 3v
    cv2.imwrite(str(tmp_path / "w.png"), img)
    lines = ["# 0", "w.png", "3 4 4", str(len(windows))] + windows
    (tmp_path / "windows.txt").write_text("\n".join(lines) + "\n")
    text = (f'type: "WindowData" top: "data" top: "label" window_data_param {{ source: "{tmp_path / "windows.txt"}" '
            f'root_folder: "{tmp_path}/" batch_size: 4 fg_fraction: 0.5 {extra} }} transform_param {{ {transform} }}')
    return img, data_net(text, "TRAIN")


def test_window_data_warps_windows_background_first(tmp_path):
    # one foreground window (class 3) and one background window, each the whole 4x4 image; the third
    # (overlap between bg_threshold and fg_threshold) is dropped
    img, net = window_setup(tmp_path, ["3 0.9 0 0 3 3", "5 0.1 0 0 3 3", "2 0.4 0 0 1 1"],
                            extra="scale: 0.5 bg_threshold: 0.3", transform="crop_size: 4 mean_value: 1")
    assert net.blob_shapes == {"data": (4, 3, 4, 4), "label": (4,)}
    (b,) = feed_batches(net, 1)
    assert b["label"].tolist() == [0, 0, 3, 3]           # batch - int(batch * fg_fraction) background first
    expected = (img.transpose(2, 0, 1).astype(np.float32) - 1) * 0.5
    assert np.array_equal(b["data"][0], expected) and np.array_equal(b["data"][3], expected)


def test_window_data_context_pad_by_hand(tmp_path):
    # window (1, 1)-(2, 2), crop 4, context_pad 1: context_scale 2 -> region (0, 0)-(4, 4), clipped to
    # (0, 0)-(3, 3) with 1 pixel past the image; scale 4/5 -> a 3x3 warp at offset (0, 0), the rest 0;
    # mirrored, the padding is mirrored too: offset (0, 1).
    img, net = window_setup(tmp_path, ["1 0.9 1 1 2 2", "0 0.0 1 1 2 2"], extra="context_pad: 1",
                            transform="crop_size: 4 mirror: true")
    src = layer_source(net.layers[0], "TRAIN", seed=0)
    warp = cv2.resize(img, (3, 3), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1).astype(np.float32)
    kinds = set()
    for pos in range(12):
        data = src[pos][0]
        if data[:, :, 3].any():                          # mirrored: zeros in column 0 and the last row
            assert np.array_equal(data[:, :3, 1:], warp[:, :, ::-1]) and not data[:, :, 0].any()
            kinds.add("mirror")
        else:
            assert np.array_equal(data[:, :3, :3], warp)
            kinds.add("plain")
        assert not data[:, 3, :].any()
    assert kinds == {"plain", "mirror"}


def test_window_data_errors(tmp_path):
    with pytest.raises(CaffeError, match="needs at least one of each"):
        window_setup(tmp_path, ["3 0.9 0 0 3 3"])
    with pytest.raises(CaffeError, match="foreground classes must be > 0"):
        window_setup(tmp_path, ["0 0.9 0 0 3 3"])
    with pytest.raises(CaffeError, match="crop_size must be positive"):
        window_setup(tmp_path, ["3 0.9 0 0 3 3", "0 0.1 0 0 3 3"], transform="mirror: false")


MEMORY3 = ('name: "m3" layer { name: "md" type: "MemoryData" top: "data" top: "label" top: "data_dim" '
           'memory_data_param { batch_size: 2 channels: 1 height: 1 width: 2 } }\n')


def test_memory_data_with_a_data_dim_top(tmp_path):
    """yilei0620/DeepLab-V2-Read-Memory-Data's MemoryData (ExactNumTopBlobs 3): setup gives data_dim
    batch x 1 x 1 x 2; Forward serves data, labels (batch x 1 x 1 x 1) and each item's (height, width)
    from pos, which wraps at the end, exactly as data and labels (its Forward_cpu: datadim_ + pos_ * 2)."""
    path = tmp_path / "m3.prototxt"
    path.write_text(MEMORY3)
    net = caffe.Net(str(path), caffe.TEST)
    assert [net.blobs[b].data.shape for b in ("data", "label", "data_dim")] == [(2, 1, 1, 2), (2,), (2, 1, 1, 2)]
    data = np.arange(8, dtype=np.float32).reshape(4, 1, 1, 2)
    labels = np.array([7, 8, 9, 10], np.float32)
    dims = np.array([[5, 7], [6, 8], [9, 11], [10, 12]], np.float32)   # (height, width) per item
    with pytest.raises(CaffeError, match="layer 'md' .MemoryData. has a third top, 'data_dim': set_input_arrays "
                                         "needs data_dims too"):
        net.set_input_arrays(data, labels)
    with pytest.raises(CaffeError, match="same first dimension .data_dims too."):
        net.set_input_arrays(data, labels, dims[:2])
    net.set_input_arrays(data, labels, dims)
    seen = []
    for _ in range(3):
        net.forward()
        assert net.blobs["data_dim"].data.shape == (2, 1, 1, 2) and net.blobs["label"].data.shape == (2, 1, 1, 1)
        seen.append((net.blobs["data"].data.ravel().tolist(), net.blobs["label"].data.ravel().tolist(),
                     net.blobs["data_dim"].data.reshape(2, 2).tolist()))
    assert seen == [([0, 1, 2, 3], [7, 8], [[5, 7], [6, 8]]), ([4, 5, 6, 7], [9, 10], [[9, 11], [10, 12]]),
                    ([0, 1, 2, 3], [7, 8], [[5, 7], [6, 8]])]
    two = tmp_path / "m2.prototxt"
    two.write_text(MEMORY)
    with pytest.raises(CaffeError, match="layer 'md' .MemoryData. has 2 tops: data_dims is only for a third"):
        caffe.Net(str(two), caffe.TEST).set_input_arrays(data, labels, dims)
    for tops, message in (('top: "data"', "takes at least 2 top blob.s., got 1"),
                          ('top: "a" top: "b" top: "c" top: "d"', "takes at most 3 top blob.s., got 4")):
        with pytest.raises(CaffeError, match=f"layer 'md' .MemoryData.: {message}"):
            Net(MEMORY3.replace('top: "data" top: "label" top: "data_dim"', tops), "TEST")


# ---------------------------------------------------------------- registry and contracts
def test_new_layer_types_are_registered_with_their_caffe_contracts():
    # (ExactNumBottomBlobs, MinTopBlobs, MaxTopBlobs, ExactNumTopBlobs) from BVLC's headers;
    # MemoryData also takes the 3 tops of the DeepLab v2 rewrite (test_memory_data_with_a_data_dim_top)
    contracts = {"Data": (0, 1, 2, -1), "ImageData": (0, -1, -1, 2), "HDF5Data": (0, 1, -1, -1),
                 "MemoryData": (0, 2, 3, -1), "WindowData": (0, -1, -1, 2), "HDF5Output": (2, -1, -1, 0)}
    for name, expected in contracts.items():
        cls = REGISTRY[name]
        assert (cls.exact_num_bottom_blobs, cls.min_top_blobs, cls.max_top_blobs, cls.exact_num_top_blobs) == expected
        assert name in caffe.layer_type_list()
    assert all(REGISTRY[t].is_data for t in ("Data", "ImageData", "HDF5Data", "MemoryData", "WindowData"))


def test_v1_names_map_to_the_new_layers(tmp_path):
    db = write_lmdb(tmp_path / "db", records())
    net = Net(f'name: "v1" layers {{ name: "d" type: DATA top: "x" top: "y" data_param {{ source: "{db}" '
              'backend: LMDB batch_size: 1 crop_size: 1 } }', "TEST")
    assert net.layers[0].type == "Data" and net.blob_shapes["x"] == (1, 1, 1, 1)   # crop moved to transform_param
    stream = Stream(layer_source(net.layers[0], "TEST"))
    assert stream(0)["x"].item() == 1                    # the centre of the 2x3 record: row 0, column 1
