"""The DeepLab fork's 2014 pycaffe API (deeplab-public / DeepLab-Context python/caffe): scripts
in the style of the release's own weight_checker.py / weight_manupilator.py and of the
fork's Classifier, run in fresh processes, each printing one deprecation line and no error.

What the fork's source says, and the tests check: Caffe's singleton phase is TRAIN until set
(common.cpp), Net(proto[, weights]) is built in it unless the prototxt's state sets a phase
(net.cpp FilterNet), Dropout reads the phase at each forward (dropout_layer.cpp), and
net.set_mean/preprocess resize, swap, transpose, scale, subtract, scale (pycaffe.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import caffe

# The release's deploy nets end in fc8_voc12 (a 1x1 convolution); here a small one with dropout.
DEPLOY = """name: 'deploy'
input: 'data'
input_dim: 1 input_dim: 3 input_dim: 2 input_dim: 2
layers { name: 'fc7' type: CONVOLUTION bottom: 'data' top: 'fc7'
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: 'gaussian' std: 1 } } }
layers { name: 'drop7' type: DROPOUT bottom: 'fc7' top: 'fc7' dropout_param { dropout_ratio: 0.5 } }
layers { name: 'fc8_voc12' type: CONVOLUTION bottom: 'fc7' top: 'fc8_voc12'
  convolution_param { num_output: %d kernel_size: 1 weight_filler { type: 'gaussian' std: 1 }
    bias_filler { type: 'constant' value: 0.5 } } }
"""


def run_script(tmp_path, body):
    """Run a script (2014 style, Python 3 syntax) in a fresh process; returns (stdout, stderr)."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "deprecated" in line]
    assert len(lines) == 1 and "2014 pycaffe API" in lines[0], proc.stderr   # one line per process
    return proc.stdout, proc.stderr


@pytest.fixture
def release(tmp_path):
    """voc12/config/vgg128_noup/deploy2.prototxt and model/vgg128_noup/init2.caffemodel, as the
    release's helper scripts expect them (21 classes; a 22-class deploy net for the surgery)."""
    config, model = tmp_path / "voc12/config/vgg128_noup", tmp_path / "voc12/model/vgg128_noup"
    config.mkdir(parents=True)
    model.mkdir(parents=True)
    (config / "deploy2.prototxt").write_text(DEPLOY % 21)
    (config / "deploy22.prototxt").write_text(DEPLOY % 22)
    net = caffe.Net(str(config / "deploy2.prototxt"), caffe.TEST)
    net.save(str(model / "init2.caffemodel"))
    return tmp_path


def test_weight_checker_and_manipulator_style_scripts(release):
    out, _ = run_script(release, """
        import numpy as np
        import caffe

        model = './voc12/config/vgg128_noup/deploy2.prototxt'
        weights = './voc12/model/vgg128_noup/init2.caffemodel'
        net_test = caffe.Net(model, weights)
        new_init = caffe.Net(model, weights)
        for l in new_init.params.keys():
            x = new_init.params[l][0].data[0]
            y = net_test.params[l][0].data[0]
            print(l, np.array_equal(x, y))

        # weight_manupilator.py: add a class row to fc8_voc12, save, load into a 22-class net
        temp = new_init.params['fc8_voc12'][0].data
        extra = np.full((1, 4, 1, 1), 0.125, np.float32)
        temp = np.vstack((temp, extra))
        new_init.params['fc8_voc12'][0].reshape(22, 4, 1, 1)
        new_init.params['fc8_voc12'][0].data.flat = temp.flat
        bias = np.concatenate((new_init.params['fc8_voc12'][1].data, [0.0]))
        new_init.params['fc8_voc12'][1].reshape(22)
        new_init.params['fc8_voc12'][1].data.flat = bias.flat
        new_init.reshape()
        new_init.save('./voc12/model/vgg128_noup/init.caffemodel')
        net22 = caffe.Net('./voc12/config/vgg128_noup/deploy22.prototxt', './voc12/model/vgg128_noup/init.caffemodel')
        print('rows', net22.params['fc8_voc12'][0].data.shape[0],
              np.array_equal(net22.params['fc8_voc12'][0].data[:21], net_test.params['fc8_voc12'][0].data),
              float(net22.params['fc8_voc12'][0].data[21].max()), float(net22.params['fc8_voc12'][1].data[21]))
        print('blob', net22.blobs['data'].num, net22.blobs['data'].channels, net22.blobs['fc8_voc12'].channels)
    """)
    assert out.splitlines() == ["fc7 True", "fc8_voc12 True", "rows 22 True 0.125 0.0", "blob 1 3 22"]


def test_global_phase_dropout_and_the_prototxts_own_state(tmp_path):
    """The fork's phase is TRAIN until set: Net(proto) keeps TRAIN-only layers and drops out;
    net.set_phase_test() makes the same net's Dropout pass values through from its next
    forward; a net built afterwards is a TEST net; a prototxt's state { phase } wins."""
    net_text = """name: 'p'
input: 'data' input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1000
layer { name: 'drop' type: 'Dropout' bottom: 'data' top: 'drop' dropout_param { dropout_ratio: 0.5 } }
layer { name: 'only_train' type: 'Power' bottom: 'data' top: 'twice' power_param { scale: 2 }
  include { phase: TRAIN } }
"""
    (tmp_path / "net.prototxt").write_text(net_text)
    (tmp_path / "test_state.prototxt").write_text("state { phase: TEST }\n" + net_text)
    out, _ = run_script(tmp_path, """
        import numpy as np
        import caffe

        net = caffe.Net('net.prototxt')
        net.set_mode_cpu()
        x = np.ones((1, 1, 1, 1000), np.float32)
        y = net.forward(data=x)['drop']
        print('train', sorted(set(np.unique(y).tolist())), 'twice' in net.blobs)
        net.set_phase_test()
        print('test', np.array_equal(net.forward(data=x)['drop'], x))
        later = caffe.Net('net.prototxt')
        print('later', 'twice' in later.blobs)
        caffe.set_phase_train()
        print('state', 'twice' in caffe.Net('test_state.prototxt').blobs)
        print('again', sorted(set(np.unique(net.forward(data=x)['drop']).tolist())))
    """)
    assert out.splitlines() == ["train [0.0, 2.0] True", "test True", "later False", "state False",
                                "again [0.0, 2.0]"]


def test_fork_classifier_and_net_preprocessing(tmp_path):
    """The fork's Classifier(model, weights, image_dims, gpu, mean, input_scale, raw_scale,
    channel_swap): a K x H x W mean of another size resized (net.set_mean's elementwise mode),
    raw_scale, channel swap; and net.set_mean/preprocess/deprocess themselves."""
    (tmp_path / "net.prototxt").write_text("""name: 'c'
input: 'data' input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 4
layer { name: 'id' type: 'Convolution' bottom: 'data' top: 'id' convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: 'pool' type: 'Pooling' bottom: 'id' top: 'pool' pooling_param { pool: AVE global_pooling: true } }
layer { name: 'prob' type: 'Softmax' bottom: 'pool' top: 'prob' }""")
    ident = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    ident.params["id"][0].data[...] = np.eye(3).reshape(3, 3, 1, 1)
    ident.params["id"][1].data[...] = 0
    ident.save(str(tmp_path / "w.caffemodel"))
    out, _ = run_script(tmp_path, """
        import numpy as np
        import caffe

        mean = np.zeros((3, 8, 8), np.float32)
        mean[2] = 1.0                                   # B G R mean, of another size than 4 x 4
        for clf in (caffe.Classifier('net.prototxt', 'w.caffemodel', (6, 6), False, mean, None, 255, (2, 1, 0)),
                    caffe.Classifier('net.prototxt', 'w.caffemodel', image_dims=(6, 6), gpu=False, mean=mean,
                                     raw_scale=255, channel_swap=(2, 1, 0))):
            red = np.zeros((6, 6, 3), np.float32)
            red[..., 0] = 0.02                          # x 255 = 5.1 in the R (last) channel, minus 1
            p = clf.predict([red, red], oversample=False)
            print(' '.join('%.6f' % v for v in p[0].ravel()))

        net = caffe.Net('net.prototxt', 'w.caffemodel')
        net.set_mean('data', np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2) * 0 + 1, mode='channel')
        net.set_raw_scale('data', 255)
        net.set_channel_swap('data', (2, 1, 0))
        net.set_input_scale('data', 0.5)
        im = np.zeros((4, 4, 3), np.float32)
        im[..., 0] = 1.0
        x = net.preprocess('data', im)
        print(x.shape, x[:, 0, 0].tolist())
        print(np.allclose(net.deprocess('data', x), im))
    """)
    e = np.exp([0, 0, 5.1 - 1.0])
    want = " ".join("%.6f" % v for v in e / e.sum())
    assert out.splitlines() == [want, want, "(3, 4, 4) [-0.5, -0.5, 127.0]", "True"]


def test_sgd_solver_solve_resume_file(tmp_path):
    """The fork's SGDSolver.solve(resume_file): training resumes from the .solverstate."""
    (tmp_path / "net.prototxt").write_text("""name: 't'
layer { name: 'data' type: 'DummyData' top: 'x' top: 'y'
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 }
    data_filler { type: 'constant' value: 1 } data_filler { type: 'constant' value: 0.5 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'p'
  inner_product_param { num_output: 2 weight_filler { type: 'constant' value: 0.1 } } }
layer { name: 'loss' type: 'EuclideanLoss' bottom: 'p' bottom: 'y' top: 'loss' }""")
    (tmp_path / "solver.prototxt").write_text("net: 'net.prototxt' base_lr: 0.1 lr_policy: 'fixed' momentum: 0.9\n"
                                              "max_iter: 4 snapshot: 2 snapshot_prefix: 'snap' display: 0\n")
    out, _ = run_script(tmp_path, """
        import caffe

        caffe.Net('net.prototxt')                       # (2014 style elsewhere in the script)
        full = caffe.SGDSolver('solver.prototxt')
        full.solve()
        w = full.net.params['ip'][0].data.copy()
        resumed = caffe.SGDSolver('solver.prototxt')
        resumed.solve('snap_iter_2.solverstate')
        print(resumed.iter, abs(resumed.net.params['ip'][0].data - w).max() < 1e-6)
    """)
    assert out.split() == ["4", "True"]


def test_nets_with_a_phase_do_not_follow_the_global_phase(tmp_path):
    from caffe._caffe import legacy as pycaffe_legacy
    (tmp_path / "n.prototxt").write_text("""input: 'data' input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 100
layer { name: 'drop' type: 'Dropout' bottom: 'data' top: 'drop' }""")
    net = caffe.Net(str(tmp_path / "n.prototxt"), caffe.TEST)
    before = pycaffe_legacy.phase()
    try:
        caffe.set_phase_train()
        x = np.ones((1, 1, 1, 100), np.float32)
        np.testing.assert_array_equal(net.forward(data=x)["drop"], x)
    finally:
        pycaffe_legacy._PHASE["phase"] = before
