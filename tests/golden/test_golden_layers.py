"""Every layer case real Caffe recorded (tests/golden/make_golden.py): our layer, built from the same prototxt text
with the recorded blobs, must give Caffe's tops (rel_err ≤ 1e-5, see golden.py) and, fed the recorded top diffs,
Caffe's bottom and parameter diffs (≤ 1e-4). Each case runs twice: in float64, so that the error measured is Caffe's
float32 rounding plus any real difference, and in float32 as the engine trains (Winograd convolution included).

Every type with a golden case must be registered (test_every_golden_type_is_implemented).
`python -m tests.golden.test_golden_layers` prints the worst error per type (forward, backward) over all cases.
"""

import numpy as np
import pytest
import torch

from caffecam.engine.kernels import winograd
from caffecam.engine.layers import LAYER_TYPES, make_layer
from caffecam.engine.prototxt import parse_text
from caffecam.proto import caffe_pb2
from tests.golden.golden import indexed, layer_case, layer_cases, rel_err

FORWARD_TOL, BACKWARD_TOL = 1e-5, 1e-4
# Types whose top shape Caffe decides in the forward pass from the data (set-up shapes are provisional).
DATA_SHAPED = {"Filter"}

CASES = layer_cases()


def _build(rec, dtype):
    lp = parse_text(str(rec["text"]), caffe_pb2.LayerParameter)
    phase = caffe_pb2.Phase.Value(str(rec["phase"]))
    bottoms = [torch.from_numpy(b).to(dtype) for b in indexed(rec, "bottom")]
    layer = make_layer(lp, [tuple(b.shape) for b in bottoms], phase, torch.Generator().manual_seed(0)).to(dtype)
    return lp, layer, bottoms


def compare(family, name, dtype=torch.float64):
    """{what: (rel_err, tolerance)} of one case (tops, blobs after the forward, bottom and param diffs), or None when
    its type is not registered."""
    rec = layer_case(family, name)
    type_ = str(rec["type"])
    if type_ not in LAYER_TYPES:
        return None
    lp, layer, bottoms = _build(rec, dtype)
    ref_tops, ref_blobs = indexed(rec, "top"), indexed(rec, "blob")
    assert len(layer.top_shapes) == len(ref_tops), "top count"
    if type_ not in DATA_SHAPED:
        assert [tuple(s) for s in layer.top_shapes] == [t.shape for t in ref_tops], "set-up top shapes"
    assert [tuple(b.shape) for b in layer.blobs] == [b.shape for b in ref_blobs], "blob shapes"
    with torch.no_grad():
        for blob, value in zip(layer.blobs, ref_blobs):
            blob.copy_(torch.from_numpy(value))

    backward = bool(rec["backward"])
    ref_bottom_diffs = indexed(rec, "bottom_diff") if backward else []
    for i, d in enumerate(ref_bottom_diffs):
        if d is not None:
            bottoms[i].requires_grad_(True)
    with torch.set_grad_enabled(backward):
        tops = layer(*bottoms)
    assert len(tops) == len(ref_tops)
    errors = {}
    for i, (top, ref) in enumerate(zip(tops, ref_tops)):
        errors[f"top {i}"] = (rel_err(top.detach().numpy(), ref), FORWARD_TOL)
    for i, ref in enumerate(indexed(rec, "blob_after")):
        if ref is not None:
            errors[f"blob {i} after forward"] = (rel_err(layer.blobs[i].detach().numpy(), ref), FORWARD_TOL)

    if backward:
        pairs = [(t, torch.from_numpy(d).to(dtype)) for t, d in zip(tops, indexed(rec, "top_diff"))
                 if t.requires_grad]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [d for _, d in pairs])
        for i, ref in enumerate(ref_bottom_diffs):
            if ref is not None:
                grad = bottoms[i].grad
                ours = np.zeros_like(ref) if grad is None else grad.numpy()
                errors[f"bottom diff {i}"] = (rel_err(ours, ref), BACKWARD_TOL)
        for i, ref in enumerate(indexed(rec, "param_diff")):
            grad = layer.blobs[i].grad
            ours = np.zeros_like(ref) if grad is None else grad.numpy()
            errors[f"param diff {i}"] = (rel_err(ours, ref), BACKWARD_TOL)
    return errors


@pytest.mark.parametrize("family, name", CASES, ids=[f"{f}/{n}" for f, n in CASES])
def test_layer_matches_caffe(family, name):
    _check(family, name, torch.float64)


@pytest.mark.parametrize("family, name", CASES, ids=[f"{f}/{n}" for f, n in CASES])
def test_layer_matches_caffe_in_float32(family, name, monkeypatch):
    """As the engine trains: float32, with the Winograd convolution taken at any size it applies to (3×3, stride 1,
    pad 1), not only from 64 or 128 channels, so that its path is checked on these small cases too: F(4×4) where
    the compiled loops run (at 7×7 and larger), F(2×2) elsewhere."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_CHANNELS_4", 1)
    monkeypatch.setattr(winograd, "MIN_ELEMENTS_4", 0)
    monkeypatch.setattr(winograd, "MIN_TILES", 1)
    _check(family, name, torch.float32)


def _check(family, name, dtype):
    errors = compare(family, name, dtype)
    assert errors is not None, f"type {layer_case(family, name)['type']} is not implemented"
    bad = {k: e for k, (e, tol) in errors.items() if not e <= tol}
    assert not bad, f"{family}/{name}: " + ", ".join(f"{k} rel_err {e:.3g}" for k, e in bad.items())


def test_every_golden_type_is_implemented():
    types = sorted({str(layer_case(f, n)["type"]) for f, n in CASES})
    missing = [t for t in types if t not in LAYER_TYPES]
    assert not missing, f"golden cases for unregistered types: {', '.join(missing)}"
    assert len(CASES) > 100 and len(types) >= 50


def report():
    """Worst forward and backward rel_err per registered type, and the types not registered yet."""
    worst, missing = {}, set()
    for family, name in CASES:
        type_ = str(layer_case(family, name)["type"])
        try:
            errors = compare(family, name)
        except Exception as exc:  # noqa: BLE001 (a report, not a test: show the failure and go on)
            print(f"{family}/{name} ({type_}): {type(exc).__name__}: {exc}")
            continue
        if errors is None:
            missing.add(type_)
            continue
        fwd, bwd, cases = worst.get(type_, (0.0, None, 0))
        for k, (e, _) in errors.items():
            if k.startswith(("top", "blob")):
                fwd = max(fwd, e)
            else:
                bwd = max(bwd or 0.0, e)
        worst[type_] = (fwd, bwd, cases + 1)
    print(f"{'type':26} cases  forward   backward")
    for type_, (fwd, bwd, cases) in sorted(worst.items()):
        flag = "" if fwd <= FORWARD_TOL and (bwd or 0) <= BACKWARD_TOL else "   FAILS"
        print(f"{type_:26} {cases:5}  {fwd:.1e}   {'-' if bwd is None else f'{bwd:.1e}'}{flag}")
    print(f"not implemented yet: {', '.join(sorted(missing)) or 'none'}")


if __name__ == "__main__":
    report()
