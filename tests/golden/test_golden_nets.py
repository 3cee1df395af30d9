"""TEST-phase forward passes of small nets real Caffe recorded (tests/golden/make_golden.py), with in-place chains
(conv -> BatchNorm -> Scale -> ReLU writing one blob): every blob our Net returns must hold what Caffe's blob holds
after the forward, the value after the last in-place layer (rel_err ≤ 1e-5, see golden.py; our net in float64).
Skipped while a layer type a net needs is not registered."""

import numpy as np
import pytest
import torch

from caffecam.engine.layers import LAYER_TYPES
from caffecam.engine.net import TEST, Net
from caffecam.engine.prototxt import parse_text
from caffecam.proto import caffe_pb2
from tests.golden.golden import HERE, load, rel_err

NETS = sorted(p.stem for p in (HERE / "nets").glob("*.npz"))


@pytest.mark.parametrize("name", NETS)
def test_net_blobs_match_caffe(name):
    rec = load(HERE / "nets" / f"{name}.npz")
    net_param = parse_text(str(rec["net"]), caffe_pb2.NetParameter)
    missing = sorted({lp.type for lp in net_param.layer} - set(LAYER_TYPES))
    assert not missing, f"type {', '.join(missing)} is not implemented"
    net = Net(net_param, TEST).double()
    assert list(net.params) == [str(n) for n in rec["layers"]]
    with torch.no_grad():
        for layer, blobs in net.params.items():
            for i, blob in enumerate(blobs):
                blob.copy_(torch.from_numpy(rec[f"param/{layer}/{i}"]))
        inputs = {k[len("input/"):]: torch.from_numpy(v.astype(np.float64)) for k, v in rec.items()
                  if k.startswith("input/")}
        blobs = net(inputs)
    errors = {b: rel_err(blobs[b].numpy(), rec[f"blob/{b}"]) for b in map(str, rec["blobs"])}
    bad = {b: e for b, e in errors.items() if not e <= 1e-5}
    assert not bad, f"{name}: " + ", ".join(f"blob {b} rel_err {e:.3g}" for b, e in bad.items())
