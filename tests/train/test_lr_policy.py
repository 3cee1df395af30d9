"""Caffe's lr policies against values computed by hand from the formulas in shared/caffe-format.md §2."""

import math

import pytest

from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from caffecam.train import lr_policy


def sp(**kw):
    stepvalue = kw.pop("stepvalue", ())
    s = caffe_pb2.SolverParameter(**kw)
    s.stepvalue.extend(stepvalue)
    return s


def rates(s, iters):
    out, step = [], 0
    for it in iters:
        r, step, _ = lr_policy.learning_rate(s, it, step)
        out.append(r)
    return out


def test_fixed():
    assert rates(sp(lr_policy="fixed", base_lr=0.5), [0, 7, 1000]) == [0.5, 0.5, 0.5]


def test_step():
    s = sp(lr_policy="step", base_lr=0.25, gamma=0.5, stepsize=3)
    # floor(it/3): 0,0,0,1,1,1,2 -> 0.25, 0.125, 0.0625
    assert rates(s, range(7)) == [0.25, 0.25, 0.25, 0.125, 0.125, 0.125, 0.0625]
    _, step, msg = lr_policy.learning_rate(s, 10)
    assert step == 3 and msg is None


def test_multistep_advances_current_step_once_per_call():
    s = sp(lr_policy="multistep", base_lr=1.0, gamma=0.1, stepvalue=[2, 4])
    out = rates(s, range(6))
    assert out == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01], rel=1e-6)
    r, step, msg = lr_policy.learning_rate(s, 2, 0)
    assert step == 1 and msg == "MultiStep Status: Iteration 2, step = 1"
    # Resumed with current_step 0 far past both steps, Caffe moves one step per iteration.
    assert lr_policy.learning_rate(s, 100, 0)[1] == 1
    assert lr_policy.learning_rate(s, 100, 2)[:2] == (pytest.approx(0.01), 2)


def test_exp_inv_poly_sigmoid():
    # float32 fields: compare in float32 precision.
    assert rates(sp(lr_policy="exp", base_lr=2.0, gamma=0.5), [0, 1, 3]) == pytest.approx([2.0, 1.0, 0.25])
    inv = sp(lr_policy="inv", base_lr=1.0, gamma=1.0, power=2.0)
    assert rates(inv, [0, 1, 3]) == pytest.approx([1.0, 1 / 4, 1 / 16])  # (1+it)^-2
    poly = sp(lr_policy="poly", base_lr=1.0, power=2.0, max_iter=4)
    assert rates(poly, [0, 2, 3, 4]) == pytest.approx([1.0, 0.25, 0.0625, 0.0])  # (1-it/4)^2
    sig = sp(lr_policy="sigmoid", base_lr=1.0, gamma=1.0, stepsize=2)
    assert rates(sig, [2, 3]) == pytest.approx([0.5, 1 / (1 + math.exp(-1))], rel=1e-7)


def test_rate_is_float32_rounded():
    s = sp(lr_policy="step", base_lr=0.01, gamma=0.1, stepsize=1)
    # 0.01f * 0.1f**1 in double, rounded to float
    import numpy as np

    expected = float(np.float32(float(np.float32(0.01)) * float(np.float32(0.1))))
    assert lr_policy.rate(s, 1) == expected


@pytest.mark.parametrize("kw, text", [
    (dict(lr_policy="cosine", base_lr=1), "unknown lr_policy 'cosine'"),
    (dict(base_lr=1), "unknown lr_policy (not set)"),
    (dict(lr_policy="step", base_lr=1), "stepsize > 0"),
    (dict(lr_policy="multistep", base_lr=1), "stepvalue"),
    (dict(lr_policy="multistep", base_lr=1, stepvalue=[5, 3]), "increasing"),
    (dict(lr_policy="poly", base_lr=1, power=1), "max_iter"),
])
def test_errors_are_one_line(kw, text):
    with pytest.raises(CaffeCamError) as e:
        lr_policy.check(sp(**kw), "s.prototxt")
    assert text in str(e.value) and str(e.value).startswith("s.prototxt") and "\n" not in str(e.value)


def test_sigmoid_far_before_its_step_is_zero_not_an_overflow():
    # exp(-0.1·(0 − 10000)) = exp(1000) is beyond double range; Caffe's 1 / (1 + inf) = 0.
    s = sp(lr_policy="sigmoid", base_lr=0.01, gamma=0.1, stepsize=10000)
    assert lr_policy.learning_rate(s, 0)[0] == 0.0
    assert lr_policy.learning_rate(s, 10000)[0] == pytest.approx(0.005)


def test_a_rate_that_is_not_finite_is_a_one_line_error():
    with pytest.raises(CaffeCamError, match=r"^s.prototxt: .*exp.* iteration 1000000"):
        lr_policy.learning_rate(sp(lr_policy="exp", base_lr=0.01, gamma=1.001), 10 ** 6, where="s.prototxt")
    with pytest.raises(CaffeCamError, match="iteration 20"):  # poly past max_iter: negative base, fractional power
        lr_policy.learning_rate(sp(lr_policy="poly", base_lr=0.01, power=0.5, max_iter=10), 20)
