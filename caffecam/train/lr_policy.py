"""Caffe's learning-rate policies (SGDSolver::GetLearningRate). `it` is the number of updates done, from 0.

    fixed:     base_lr
    step:      base_lr · gamma^floor(it / stepsize)                 (current_step = floor(it / stepsize))
    multistep: base_lr · gamma^current_step, where current_step advances by one when it ≥ stepvalue[current_step]
    exp:       base_lr · gamma^it
    inv:       base_lr · (1 + gamma·it)^(−power)
    poly:      base_lr · (1 − it/max_iter)^power
    sigmoid:   base_lr · 1 / (1 + exp(−gamma·(it − stepsize)))

Caffe computes in double from the float fields and stores the rate as a float: `rate()` rounds to float32 too.
"""

import math

import numpy as np

from caffecam.errors import CaffeCamError

POLICIES = ("fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid")


def check(sp, where="solver"):
    """Validate the policy and the fields it needs; a one-line CaffeCamError otherwise."""
    policy = sp.lr_policy
    if policy not in POLICIES:
        shown = f"'{policy}'" if policy else "(not set)"
        raise CaffeCamError(f"{where}: unknown lr_policy {shown}; use one of {', '.join(POLICIES)}")
    if policy == "step" and sp.stepsize <= 0:
        raise CaffeCamError(f"{where}: lr_policy \"step\" needs stepsize > 0 (got {sp.stepsize})")
    if policy == "multistep" and not len(sp.stepvalue):
        raise CaffeCamError(f"{where}: lr_policy \"multistep\" needs at least one stepvalue")
    if policy == "multistep" and list(sp.stepvalue) != sorted(sp.stepvalue):
        raise CaffeCamError(f"{where}: stepvalue must be increasing (got {list(sp.stepvalue)})")
    if policy == "poly" and sp.max_iter <= 0:
        raise CaffeCamError(f"{where}: lr_policy \"poly\" needs max_iter > 0")


def learning_rate(sp, it, current_step=0, where="solver"):
    """(rate as a Python float, new current_step, message or None) for update number `it`.

    Only multistep changes current_step by itself (one step per call, as Caffe), and it logs
    "MultiStep Status: Iteration N, step = S" when it does; step sets current_step = floor(it / stepsize).
    A rate that is not a finite real number (gamma^it overflowing, a negative base to a fractional power) is a
    one-line CaffeCamError naming `where`.
    """
    policy = sp.lr_policy
    try:
        rate, current_step, msg = _learning_rate(sp, it, current_step)
    except (OverflowError, ZeroDivisionError):
        rate, msg = math.inf, None
    if isinstance(rate, complex) or not math.isfinite(rate):
        raise CaffeCamError(f"{where}: lr_policy \"{policy}\" gives no finite learning rate at iteration {it} "
                            f"(got {rate}); check base_lr, gamma, power, stepsize and max_iter")
    return rate, current_step, msg


def _learning_rate(sp, it, current_step):
    policy, base, gamma = sp.lr_policy, sp.base_lr, sp.gamma
    msg = None
    if policy == "fixed":
        rate = base
    elif policy == "step":
        current_step = it // sp.stepsize
        rate = base * gamma ** current_step
    elif policy == "multistep":
        if current_step < len(sp.stepvalue) and it >= sp.stepvalue[current_step]:
            current_step += 1
            msg = f"MultiStep Status: Iteration {it}, step = {current_step}"
        rate = base * gamma ** current_step
    elif policy == "exp":
        rate = base * gamma ** it
    elif policy == "inv":
        rate = base * (1.0 + gamma * it) ** (-sp.power)
    elif policy == "poly":
        rate = base * (1.0 - it / sp.max_iter) ** sp.power
    elif policy == "sigmoid":
        z = -gamma * (it - sp.stepsize)
        # exp(z) beyond double range: Caffe's 1 / (1 + inf) = 0.
        rate = base * (1.0 / (1.0 + math.exp(z))) if z < 709 else 0.0
    else:
        check(sp)
    return rate, current_step, msg


def rate(sp, it, current_step=0):
    """The float32-rounded rate, as Caffe's `Dtype rate` holds it (no state change, no message)."""
    return float(np.float32(learning_rate(sp, it, current_step)[0]))
