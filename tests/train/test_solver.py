"""The solver against a float64 NumPy reference of Caffe's updates, its log against Caffe's parse_log regexes,
snapshots and bitwise resume, errors."""

import io
import re

import numpy as np
import pytest
import torch

from caffecam.engine.prototxt import parse_text, read_binary, write_text
from caffecam.engine.weights import blob_to_array, read_caffemodel
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from caffecam.train.log import CaffeLogger
from caffecam.train.solver import Solver
from tests.solver_helpers import (
    IMAGE_NET,
    LINEAR_NET,
    array_feeds,
    dataset,
    linear_solver,
    reference,
    softmax_loss_grads,
    weights_of,
    write_images,
)

SGD_TEXT = """base_lr: 0.2 lr_policy: "step" gamma: 0.5 stepsize: 2 momentum: 0.9 weight_decay: 0.01
max_iter: 6 random_seed: 3 snapshot_after_train: false"""


def run(solver):
    w0, b0 = weights_of(solver)
    solver.solve()
    return w0, b0


def test_sgd_matches_numpy_over_an_lr_change_and_differs_from_torch_sgd():
    s = linear_solver(SGD_TEXT)
    w0, b0 = run(s)
    x, y = dataset()
    (w, b), hist, _ = reference(w0, b0, x, y, 6, 4, 0.2, weight_decay=0.01, stepsize=2)
    np.testing.assert_allclose(weights_of(s)[0], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights_of(s)[1], b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.updater.history[0].numpy(), hist[0], rtol=1e-5, atol=1e-6)
    assert s.iter == 6 and s.current_step == 2

    # torch.optim.SGD keeps the rate outside the history: same until the rate changes at iteration 2, then not.
    def torch_sgd(iters):
        tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
        opt = torch.optim.SGD([{"params": [tw], "lr": 0.2, "weight_decay": 0.01},
                               {"params": [tb], "lr": 0.4, "weight_decay": 0.0}], momentum=0.9)
        for it in range(iters):
            idx = (np.arange(4) + it * 4) % len(x)
            _, gw, gb = softmax_loss_grads(tw.detach().numpy(), tb.detach().numpy(), x[idx].astype(np.float64), y[idx])
            tw.grad, tb.grad = torch.tensor(gw), torch.tensor(gb)
            for group, mult in zip(opt.param_groups, (1, 2)):
                group["lr"] = 0.2 * mult * 0.5 ** (it // 2)
            opt.step()
        return tw.detach().numpy()

    (w2, _), _, _ = reference(w0, b0, x, y, 2, 4, 0.2, weight_decay=0.01, stepsize=2)
    np.testing.assert_allclose(torch_sgd(2), w2, rtol=1e-10)
    assert np.abs(torch_sgd(6) - w).max() > 1e-3


@pytest.mark.parametrize("kind, extra, ref_kw", [
    ("Nesterov", "", {}),
    ("Adam", "momentum2: 0.99 delta: 1e-6", dict(momentum2=0.99, delta=1e-6)),
    ("AdaGrad", "delta: 1e-6", dict(momentum=0.0, delta=1e-6)),
    ("RMSProp", "rms_decay: 0.9 delta: 1e-6", dict(momentum=0.0, rms_decay=0.9, delta=1e-6)),
    ("AdaDelta", "delta: 1e-6 momentum: 0.95", dict(momentum=0.95, delta=1e-6)),
])
def test_other_solver_types_match_numpy(kind, extra, ref_kw):
    text = SGD_TEXT.replace("momentum: 0.9", "" if "momentum" in ref_kw else "momentum: 0.9")
    s = linear_solver(f'{text} type: "{kind}" {extra}')
    w0, b0 = run(s)
    x, y = dataset()
    kw = dict(momentum=0.9, weight_decay=0.01, stepsize=2, kind=kind)
    kw.update(ref_kw)
    (w, b), hist, _ = reference(w0, b0, x, y, 6, 4, 0.2, **kw)
    np.testing.assert_allclose(weights_of(s)[0], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights_of(s)[1], b, rtol=1e-4, atol=1e-5)
    assert len(s.updater.history) == len(hist)
    for mine, ref in zip(s.updater.history, hist):  # Adam: m, m, v, v — all m first, as Caffe
        np.testing.assert_allclose(mine.numpy(), ref, rtol=1e-4, atol=1e-6)


def test_l1_lr_mult_decay_mult_and_frozen_blob():
    s = linear_solver(SGD_TEXT.replace("0.01", "0.05") + ' regularization_type: "L1"', lr_w=3, lr_b=0)
    w0, b0 = run(s)
    x, y = dataset()
    (w, b), _, _ = reference(w0, b0, x, y, 6, 4, 0.2, weight_decay=0.05, stepsize=2, regularization="L1",
                             lr_mults=(3, 0))
    np.testing.assert_allclose(weights_of(s)[0], w, rtol=1e-5, atol=1e-6)
    assert np.array_equal(weights_of(s)[1], b0)  # lr_mult 0: never updated


def test_iter_size_accumulation_equals_one_big_batch():
    s = linear_solver(SGD_TEXT + " iter_size: 2 display: 1 average_loss: 1", batch=4, stream=(out := io.StringIO()))
    w0, b0 = run(s)
    x, y = dataset()
    (w, b), _, losses = reference(w0, b0, x, y, 6, 8, 0.2, weight_decay=0.01, stepsize=2)  # batch 8, iter_size 1
    np.testing.assert_allclose(weights_of(s)[0], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights_of(s)[1], b, rtol=1e-5, atol=1e-6)
    logged = [float(v) for v in re.findall(r"Iteration \d+ \(.*\), loss = (\S+)", out.getvalue())]
    np.testing.assert_allclose(logged, losses, rtol=1e-5)  # mean of the two passes = the big batch's loss


def test_clip_gradients_scales_to_the_clip_norm():
    s = linear_solver(SGD_TEXT + " clip_gradients: 0.05", stream=(out := io.StringIO()))
    w0, b0 = run(s)
    x, y = dataset()
    (w, b), _, _ = reference(w0, b0, x, y, 6, 4, 0.2, weight_decay=0.01, stepsize=2, clip=0.05)
    np.testing.assert_allclose(weights_of(s)[0], w, rtol=1e-5, atol=1e-6)
    assert "Gradient clipping: scaling down gradients (L2 norm" in out.getvalue()


# ---- the log -----------------------------------------------------------------------------------------------------
# Caffe's tools/extra/parse_log.py regular expressions.
RX_ITER = re.compile(r"Iteration (\d+)")
RX_TRAIN = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
RX_TEST = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
RX_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def test_log_lines_order_and_values(tmp_path):
    text = ("base_lr: 0.2 lr_policy: \"step\" gamma: 0.5 stepsize: 2 momentum: 0.9 max_iter: 4 display: 2 "
            "average_loss: 2 test_iter: 2 test_interval: 2 random_seed: 1 snapshot: 4 "
            f"snapshot_prefix: \"{tmp_path}/lin\"")
    s = linear_solver(text, log_path=tmp_path / "train.log", stream=None)
    w0, b0 = run(s)
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert all(re.match(r"[IW]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ", ln) for ln in lines)
    msgs = [ln.split("] ", 1)[1].strip() for ln in lines]
    kinds = []
    for m in msgs:
        kind = ("solving" if m.startswith("Solving") else "policy" if m.startswith("Learning Rate Policy")
                else "testing" if "Testing net" in m else "test" if RX_TEST.search(m) else "train" if RX_TRAIN.search(m)
                else "lr" if RX_LR.search(m) else "loss" if "loss =" in m else "snap" if m.startswith("Snapshotting")
                else "done" if m == "Optimization Done." else m)
        kinds.append((kind, int(RX_ITER.search(m).group(1)) if RX_ITER.search(m) else None))
    test_block = [("testing", None), ("test", None), ("test", None)]
    expected = ([("solving", None), ("policy", None)] + [("testing", 0)] + test_block[1:]
                + [("loss", 0), ("train", None), ("lr", 0), ("testing", 2)] + test_block[1:]
                + [("loss", 2), ("train", None), ("lr", 2), ("snap", None), ("snap", None), ("loss", 4),
                   ("testing", 4)] + test_block[1:] + [("done", None)])
    assert [k for k, _ in kinds] == [k for k, _ in expected]
    assert [i for (_, i), (_, e) in zip(kinds, expected) if e is not None] == [0, 0, 0, 2, 2, 2, 4, 4]

    # Values: test outputs at iteration 0 are means over 2 batches of 4 under the initial weights.
    xt, yt = dataset(8, seed=1)

    def expected_test(w, b):
        accs, losses = [], []
        for k in range(2):
            idx = np.arange(4) + 4 * k
            accs.append(((xt[idx] @ w.T + b).argmax(1) == yt[idx]).mean())
            losses.append(softmax_loss_grads(w, b, xt[idx].astype(np.float64), yt[idx])[0])
        return np.mean(accs), np.mean(losses)

    tests = [RX_TEST.search(m).groups() for m in msgs if RX_TEST.search(m)]
    assert [(i, n) for i, n, _ in tests[:2]] == [("0", "acc"), ("1", "loss")]  # sorted by blob name
    acc, loss = expected_test(w0, b0)
    assert float(tests[0][2]) == pytest.approx(acc, abs=1e-6)
    assert float(tests[1][2]) == pytest.approx(loss, rel=1e-5)
    # The last test (after the final update) runs on the trained weights, shared with the train net.
    assert s.test_nets[0].layer_by_name["ip"].blobs[0] is s.net.layer_by_name["ip"].blobs[0]
    acc, loss = expected_test(*weights_of(s))
    assert float(tests[-2][2]) == pytest.approx(acc, abs=1e-6)
    assert float(tests[-1][2]) == pytest.approx(loss, rel=1e-5)
    assert f"(* 1 = {tests[1][2]} loss)" in [m for m in msgs if RX_TEST.search(m)][1]
    # Training: smoothed loss over the last 2 iterations; lr by the step policy.
    x, y = dataset()
    _, _, ref_losses = reference(w0, b0, x, y, 4, 4, 0.2, stepsize=2)
    smoothed = [float(m.rsplit("= ", 1)[1]) for m in msgs if re.match(r"Iteration \d+ \(", m)]
    assert smoothed == pytest.approx([ref_losses[0], np.mean(ref_losses[1:3])], rel=1e-5)
    assert [float(RX_LR.search(m).group(1)) for m in msgs if RX_LR.search(m)] == [0.2, 0.1]
    assert any(m == f"Snapshotting to binary proto file {tmp_path}/lin_iter_4.caffemodel" for m in msgs)
    assert re.fullmatch(r"Iteration 4 \(\S+ iter/s, \S+s/2 iters\), loss = \S+", msgs[kinds.index(("loss", 2)) + 0]
                        .replace("Iteration 2", "Iteration 4")) is not None
    assert re.fullmatch(r"Iteration 4, loss = [\d.e+-]+", msgs[[k for k, _ in kinds].index("done") - 4])


# ---- snapshots and resume -----------------------------------------------------------------------------------------

def test_snapshot_contents(tmp_path):
    s = linear_solver(SGD_TEXT + f' snapshot: 3 snapshot_prefix: "{tmp_path}/lin"')
    w0, b0 = run(s)
    x, y = dataset()
    (w3, b3), hist3, _ = reference(w0, b0, x, y, 3, 4, 0.2, weight_decay=0.01, stepsize=2)
    state = read_binary(tmp_path / "lin_iter_3.solverstate", caffe_pb2.SolverState, "solverstate")
    assert state.iter == 3 and state.current_step == 1 and state.learned_net == f"{tmp_path}/lin_iter_3.caffemodel"
    np.testing.assert_allclose(blob_to_array(state.history[0]), hist3[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(blob_to_array(state.history[1]), hist3[1], rtol=1e-5, atol=1e-7)
    model = {lp.name: lp for lp in read_caffemodel(tmp_path / "lin_iter_3.caffemodel").layer}
    np.testing.assert_allclose(blob_to_array(model["ip"].blobs[0]), w3, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blob_to_array(model["ip"].blobs[1]), b3, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "lin_iter_6.solverstate").exists()  # 6 % 3 == 0: no extra snapshot after training
    assert not list(tmp_path.glob(".*tmp"))


def image_solver(tmp_path, prefix, max_iter, extra=""):
    if not (tmp_path / "list.txt").exists():
        write_images(tmp_path)
        (tmp_path / "net.prototxt").write_text(IMAGE_NET.replace("DIR", str(tmp_path)))
    text = (f'net: "{tmp_path}/net.prototxt" base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 4 momentum: 0.9 '
            f'weight_decay: 0.001 max_iter: {max_iter} test_iter: 1 test_interval: 3 display: 0 snapshot: 5 '
            f'random_seed: 7 snapshot_prefix: "{tmp_path}/{prefix}/snap" {extra}')
    path = tmp_path / f"{prefix}.prototxt"
    write_text(path, parse_text(text, caffe_pb2.SolverParameter))
    return parse_text(text, caffe_pb2.SolverParameter), str(path)


def caffemodel_arrays(path):
    return {(lp.name, i): blob_to_array(b) for lp in read_caffemodel(path).layer for i, b in enumerate(lp.blobs)}


def test_resume_is_bitwise_equal_to_a_straight_run(tmp_path):
    sp, path = image_solver(tmp_path, "straight", 10)
    Solver(sp, path, "cpu", None, workers=0).solve()
    sp, path = image_solver(tmp_path, "first", 5)
    Solver(sp, path, "cpu", None, workers=0).solve()
    sp, path = image_solver(tmp_path, "resumed", 10)
    s = Solver(sp, path, "cpu", CaffeLogger(stream=(out := io.StringIO())), workers=1)
    s.restore(tmp_path / "first" / "snap_iter_5.solverstate")
    assert s.iter == 5 and s.current_step == 1 and s.train_feeds[0].batches_done == 5
    assert s.test_feeds[0][0].batches_done == 2  # tests ran at iterations 0 and 3
    s.solve()
    s.close()
    assert "Restoring previous solver status from" in out.getvalue()
    a = caffemodel_arrays(tmp_path / "straight" / "snap_iter_10.caffemodel")
    b = caffemodel_arrays(tmp_path / "resumed" / "snap_iter_10.caffemodel")
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    first = caffemodel_arrays(tmp_path / "first" / "snap_iter_5.caffemodel")
    assert not np.array_equal(first[("fc", 0)], a[("fc", 0)])


def test_restore_finds_weights_next_to_the_state_and_rejects_another_net(tmp_path):
    s = linear_solver(SGD_TEXT + f' snapshot: 3 snapshot_prefix: "{tmp_path}/a/lin"')
    s.solve()
    (tmp_path / "a").rename(tmp_path / "moved")
    s2 = linear_solver(SGD_TEXT)
    s2.restore(tmp_path / "moved" / "lin_iter_6.solverstate")
    assert np.array_equal(weights_of(s2)[0], weights_of(s)[0]) and s2.iter == 6
    (tmp_path / "moved" / "lin_iter_6.caffemodel").unlink()
    with pytest.raises(CaffeCamError, match="are missing"):
        s2.restore(tmp_path / "moved" / "lin_iter_6.solverstate")
    adam = linear_solver(SGD_TEXT + ' type: "Adam"')
    with pytest.raises(CaffeCamError, match="2 history blobs, the Adam solver of this net needs 4"):
        adam.restore(tmp_path / "moved" / "lin_iter_3.solverstate")


# ---- errors -------------------------------------------------------------------------------------------------------

def test_nan_loss_stops_with_the_iteration():
    s = linear_solver('base_lr: 1e38 lr_policy: "fixed" max_iter: 20 momentum: 0.9 snapshot_after_train: false')
    with pytest.raises(CaffeCamError, match=r"solver.prototxt: iteration [1-9]\d*: the loss is (nan|inf)") as e:
        s.solve()
    assert "\n" not in str(e.value)


def test_missing_net_file_names_the_solver_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.prototxt").write_text('base_lr: 0.1\nlr_policy: "fixed"\nnet: "nets/missing.prototxt"\n')
    from caffecam.engine.prototxt import read_solver

    with pytest.raises(CaffeCamError) as e:
        Solver(read_solver("s.prototxt"), "s.prototxt", "cpu", None)
    assert str(e.value).startswith('s.prototxt:3: net "nets/missing.prototxt" not found')


@pytest.mark.parametrize("text, msg", [
    ('base_lr: 0.1 lr_policy: "fixed" iter_size: 0', "iter_size must be >= 1"),
    ('base_lr: 0.1 lr_policy: "warm"', "unknown lr_policy 'warm'"),
    ('base_lr: 0.1 lr_policy: "fixed" type: "Lion"', "unknown solver type 'Lion'"),
    ('base_lr: 0.1 lr_policy: "fixed" type: "AdaGrad" momentum: 0.9', "momentum cannot be used with AdaGrad"),
    ('base_lr: 0.1 lr_policy: "fixed" regularization_type: "L3"', "unknown regularization_type 'L3'"),
])
def test_bad_solver_fields(text, msg):
    with pytest.raises(CaffeCamError, match=re.escape(msg)):
        linear_solver(text)


def test_legacy_solver_type_enum():
    s = linear_solver('base_lr: 0.1 lr_policy: "fixed" solver_type: NESTEROV')
    assert s.kind == "Nesterov"


def test_stop_request_snapshots_and_stops(tmp_path):
    s = linear_solver(SGD_TEXT.replace("max_iter: 6", "max_iter: 100") + f' snapshot_prefix: "{tmp_path}/lin"',
                      on_iteration=lambda it: it == 4 and s.request_stop())
    assert s.solve() == "stopped"
    assert s.iter == 4 and (tmp_path / "lin_iter_4.solverstate").exists()


def test_label_outside_the_classifier_is_a_line_error(tmp_path):
    sp, path = image_solver(tmp_path, "labels", 2)
    lines = (tmp_path / "list.txt").read_text().splitlines()
    lines[6] = lines[6].rsplit(" ", 1)[0] + " 3"  # 3 classes: labels 0..2
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(CaffeCamError, match=r"list.txt:7: label 3 is outside \[0, 3\)"):
        Solver(sp, path, "cpu", None, workers=0)


def test_train_state_stage_picks_the_data_layer(tmp_path):
    sp, path = image_solver(tmp_path, "stage", 1)
    big = IMAGE_NET.replace("DIR", str(tmp_path)).replace("include { phase: TRAIN }",
                                                          'include { phase: TRAIN stage: "big" }', 1)
    big = big.replace("batch_size: 3", "batch_size: 5", 1)
    small = IMAGE_NET.replace("DIR", str(tmp_path)).split("layer {")[1]
    small = "layer {" + small.replace("include { phase: TRAIN }", 'include { phase: TRAIN not_stage: "big" }')
    (tmp_path / "net.prototxt").write_text(big.replace('name: "tinyimg"\n', 'name: "tinyimg"\n' + small))
    assert Solver(sp, path, "cpu", None, workers=0).batch_size == 3
    sp.train_state.stage.append("big")
    assert Solver(sp, path, "cpu", None, workers=0).batch_size == 5


def test_a_data_error_mid_run_snapshots_the_work_done(tmp_path):
    sp, path = image_solver(tmp_path, "corrupt", 20)
    s = Solver(sp, path, "cpu", None, workers=0)
    train = [s.train_feeds[0]._stream.item_index(q) for q in range(12)]
    # an image neither the first train batch nor the first test pass (items 0-3) reads: it fails at iteration > 0
    bad = next(i for i in range(4, 10) if i not in train[:3])
    (tmp_path / "img" / f"{bad}.png").write_bytes(b"not a png")
    with pytest.raises(CaffeCamError, match=rf"list.txt:{bad + 1}: image .* cannot be decoded"):
        s.solve()
    assert s.iter > 0
    state = read_binary(f"{tmp_path}/corrupt/snap_iter_{s.iter}.solverstate", caffe_pb2.SolverState, "solverstate")
    assert state.iter == s.iter
    saved = caffemodel_arrays(f"{tmp_path}/corrupt/snap_iter_{s.iter}.caffemodel")
    np.testing.assert_array_equal(saved[("fc", 0)], s.net.params["fc"][0].detach().numpy())


def test_an_unwritable_snapshot_folder_fails_at_the_start(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(CaffeCamError, match=r"^solver.prototxt: cannot write snapshots to '.*file/sub' "):
        linear_solver(SGD_TEXT + f" snapshot: 100 snapshot_prefix: \"{tmp_path}/file/sub/lin\"")


def test_batch_norm_statistics_follow_the_running_average_and_never_the_update():
    """BatchNorm's blobs have lr_mult 0 (Caffe forces it): SGD with weight decay leaves them alone; each TRAIN
    forward updates them from its batch; the test net shares them."""
    bn = ('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" '
          'batch_norm_param { moving_average_fraction: 0.8 } }')
    net = LINEAR_NET.replace('layer { name: "ip"', bn + '\nlayer { name: "ip"')
    sp = parse_text(SGD_TEXT + " test_iter: 1 test_interval: 100", caffe_pb2.SolverParameter)
    sp.net_param.CopyFrom(parse_text(net.replace("LRW", "1").replace("LRB", "2"), caffe_pb2.NetParameter))
    x, y = dataset()
    s = Solver(sp, "solver.prototxt", "cpu", CaffeLogger(None, stream=io.StringIO()),
               feeds=array_feeds((x, y), dataset(8, seed=1)))
    assert [lr for name, _, _, lr, _ in s.net.param_specs() if name == "bn"] == [0, 0, 0]
    s.solve()
    mean, var, factor = np.zeros(5), np.zeros(5), np.zeros(1)
    for it in range(6):
        batch = x[(np.arange(4) + it * 4) % len(x)].astype(np.float64)
        mean, var, factor = ref_bn_update(batch, mean, var, factor, 0.8)
    bn = s.net.layer_by_name["bn"].blobs
    for blob, want in zip(bn, (mean, var, factor)):
        np.testing.assert_allclose(blob.detach().numpy(), want, rtol=1e-5, atol=1e-7)
    assert all(a is b for a, b in zip(s.test_nets[0].layer_by_name["bn"].blobs, bn))


def ref_bn_update(batch, mean, var, factor, fraction):
    m = len(batch)
    return (batch.mean(0) + fraction * mean, batch.var(0) * m / (m - 1) + fraction * var, factor * fraction + 1)


def test_dummy_data_net_trains():
    # DummyData makes its tops inside the net (no feed): constant images of 18 ones, label 1, a zero classifier (no
    # fillers), plain SGD: the first loss is that of three equal scores, ln 3, and two steps follow by hand.
    sp = parse_text('base_lr: 0.5 lr_policy: "fixed" max_iter: 2 display: 1 snapshot_after_train: false',
                    caffe_pb2.SolverParameter)
    sp.net_param.CopyFrom(parse_text('''
        layer { name: "data" type: "DummyData" top: "data" top: "label"
          dummy_data_param { shape { dim: 5 dim: 2 dim: 3 dim: 3 } shape { dim: 5 }
                             data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 1 } } }
        layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }''',
        caffe_pb2.NetParameter))
    stream = io.StringIO()
    s = Solver(sp, "solver.prototxt", "cpu", CaffeLogger(None, stream=stream))
    assert s.batch_size == 5
    s.solve()
    losses = dict(re.findall(r"Iteration (\d+) \(.*?\), loss = ([\d.e+-]+)", stream.getvalue()))
    assert float(losses["0"]) == pytest.approx(np.log(3), rel=1e-5)
    w, b, x, y = np.zeros((3, 18)), np.zeros(3), np.ones(18), np.eye(3)[1]
    for _ in range(2):
        z = w @ x + b
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        w, b = w - 0.5 * np.outer(p - y, x), b - 0.5 * (p - y)
    np.testing.assert_allclose(s.net.params["fc"][1].detach().numpy(), b, rtol=1e-5)
    np.testing.assert_allclose(s.net.params["fc"][0].detach().numpy(), w, rtol=1e-5)
