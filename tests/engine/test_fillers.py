"""Caffe's fillers: values, bounds and statistics on large draws; fan_in = count/shape[0], fan_out = count/shape[1]."""

import math

import pytest
import torch

from caffecam.engine.fillers import fill
from caffecam.engine.prototxt import parse_text
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

SHAPE = (64, 32, 3, 3)  # count 18432: fan_in 288, fan_out 576, average 432
FANS = {"FAN_IN": 288, "FAN_OUT": 576, "AVERAGE": 432}


def filler(text):
    return parse_text(text, caffe_pb2.FillerParameter)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_constant_and_default():
    out = fill((3, 4), filler("type: 'constant' value: 0.25"))
    assert out.dtype == torch.float32 and out.shape == (3, 4) and torch.all(out == 0.25)
    out = fill((5,), None)
    assert out.dtype == torch.float32 and torch.all(out == 0)
    assert torch.all(fill((2,), filler("")) == 0)  # FillerParameter's default type is constant, value 0


def test_uniform_bounds_and_moments():
    out = fill((200, 500), filler("type: 'uniform' min: -2 max: 3"), gen())
    assert out.min() >= -2 and out.max() <= 3
    assert out.min() < -1.99 and out.max() > 2.99
    assert abs(out.mean().item() - 0.5) < 0.02           # sd of the mean: 5/sqrt(12·1e5) ≈ 0.0046
    assert abs(out.var().item() - 25 / 12) / (25 / 12) < 0.02


def test_gaussian_moments():
    out = fill((200, 500), filler("type: 'gaussian' mean: 1.5 std: 0.3"), gen())
    assert abs(out.mean().item() - 1.5) < 0.005           # sd of the mean ≈ 0.00095
    assert abs(out.std().item() - 0.3) < 0.005
    default = fill((200, 500), filler("type: 'gaussian'"), gen(1))
    assert abs(default.mean().item()) < 0.02 and abs(default.std().item() - 1.0) < 0.01


def test_gaussian_sparse_keeps_sparse_over_num_outputs():
    out = fill((10, 20000), filler("type: 'gaussian' std: 1 sparse: 2"), gen())
    assert abs((out != 0).float().mean().item() - 0.2) < 0.01


@pytest.mark.parametrize("norm", ["FAN_IN", "FAN_OUT", "AVERAGE"])
def test_xavier_bounds(norm):
    text = "type: 'xavier'" + ("" if norm == "FAN_IN" else f" variance_norm: {norm}")
    out = fill(SHAPE, filler(text), gen())
    bound = math.sqrt(3.0 / FANS[norm])
    assert out.abs().max() <= bound
    assert out.abs().max() > 0.99 * bound
    assert abs(out.var().item() - 1.0 / FANS[norm]) / (1.0 / FANS[norm]) < 0.05
    assert abs(out.mean().item()) < 0.05 * bound


def test_xavier_ignores_std_and_handles_2d_and_1d():
    out = fill((14, 1024), filler("type: 'xavier' std: 100"), gen())  # CAM_fc_14: fan_in 1024
    bound = math.sqrt(3.0 / 1024)
    assert out.abs().max() <= bound and out.abs().max() > 0.98 * bound
    # 1-D: fan_in = count / shape[0] = 1, fan_out = count (there is no shape[1]).
    assert fill((4000,), filler("type: 'xavier'"), gen()).abs().max() > 0.99 * math.sqrt(3.0)
    out = fill((4000,), filler("type: 'xavier' variance_norm: FAN_OUT"), gen())
    assert out.abs().max() <= math.sqrt(3.0 / 4000)


@pytest.mark.parametrize("norm", ["FAN_IN", "FAN_OUT", "AVERAGE"])
def test_msra_std(norm):
    text = "type: 'msra'" + ("" if norm == "FAN_IN" else f" variance_norm: {norm}")
    out = fill(SHAPE, filler(text), gen())
    std = math.sqrt(2.0 / FANS[norm])
    assert abs(out.std().item() - std) / std < 0.02       # 18432 draws: relative sd of the sd ≈ 0.005
    assert abs(out.mean().item()) < 0.03 * std


def test_positive_unitball_rows_sum_to_one():
    out = fill((6, 3, 2, 2), filler("type: 'positive_unitball'"), gen())
    assert torch.all(out >= 0)
    torch.testing.assert_close(out.reshape(6, -1).sum(1), torch.ones(6))


@pytest.mark.parametrize("text", ["type: 'uniform'", "type: 'gaussian' std: 0.01", "type: 'xavier'", "type: 'msra'"])
def test_seeded_determinism(text):
    a = fill((8, 4, 3, 3), filler(text), gen(7))
    b = fill((8, 4, 3, 3), filler(text), gen(7))
    c = fill((8, 4, 3, 3), filler(text), gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_unknown_filler_is_an_error():
    with pytest.raises(CaffeCamError, match="layer 'x'.*'bogus'"):
        fill((2, 2), filler("type: 'bogus'"), gen(), where="layer 'x'")


@pytest.mark.parametrize("text,needle", [
    ("type: 'uniform' min: 1 max: 0", "min 1 above max 0"),
    ("type: 'gaussian' std: -0.1", "negative std -0.1"),
])
def test_impossible_filler_ranges_are_errors(text, needle):
    # Caffe's random generators check these; torch raised its own RuntimeError (a traceback) here.
    with pytest.raises(CaffeCamError, match=rf"layer 'x'.*{needle}"):
        fill((2, 3), filler(text), gen(), where="layer 'x'")


def test_empty_blob_fills_nothing():
    # A zero-size blob (e.g. an Input dim of 0): nothing to draw, and no fan to divide by.
    for text in ("type: 'xavier'", "type: 'msra'", "type: 'gaussian' sparse: 2", "type: 'positive_unitball'"):
        assert fill((3, 0, 2), filler(text), gen()).shape == (3, 0, 2)


def test_bilinear_hand_values_and_errors():
    # Caffe's BilinearFiller: f = ceil(k/2), c = (k − 1)/(2f), ramp(x) = 1 − |x/f − c|, w = ramp(y)·ramp(x).
    # k = 4: f = 2, c = 0.75, ramp 0.25 0.75 0.75 0.25; k = 3: f = 2, c = 0.5, ramp 0.5 1 0.5.
    for k, ramp in ((4, [0.25, 0.75, 0.75, 0.25]), (3, [0.5, 1.0, 0.5])):
        out = fill((2, 3, k, k), filler("type: 'bilinear'"))
        r = torch.tensor(ramp)
        assert out.dtype == torch.float32 and torch.equal(out, (r[:, None] * r[None, :]).expand(2, 3, k, k))
    for shape in ((2, 3, 4, 3), (3, 4, 4)):
        with pytest.raises(CaffeCamError, match="bilinear.*square"):
            fill(shape, filler("type: 'bilinear'"))


@pytest.mark.parametrize("text,needle", [
    ("type: 'uniform' min: 1 max: 0", "min 1 above max 0"),
    ("type: 'bogus'", "unknown filler type 'bogus'"),
    ("type: 'bilinear'", "bilinear filler needs a 4-D blob with a square kernel"),
])
def test_a_net_checks_its_fillers_at_set_up_without_allocating(text, needle):
    # Set-up runs on meta tensors (nothing allocated, nothing drawn), and still refuses what Caffe's set-up refuses.
    net = parse_text(f"""input: "x" input_shape {{ dim: 1 dim: 2 dim: 5 dim: 5 }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y"
                 inner_product_param {{ num_output: 3 weight_filler {{ {text} }} }} }}""", caffe_pb2.NetParameter)
    from caffecam.engine.net import TEST, Net
    with pytest.raises(CaffeCamError, match=rf"layer 'ip'.*{needle}"):
        Net(net, TEST, meta=True)


def test_building_and_running_a_net_does_not_import_the_compiler_stack():
    # Drawing on the meta device went through torch._refs, which imports torch._dynamo: 1 s of every cam.py start.
    import subprocess
    import sys
    from pathlib import Path
    code = """if True:
        import sys
        import torch
        from caffecam.engine.net import TEST, Net
        from caffecam.engine.prototxt import parse_text
        from caffecam.proto import caffe_pb2
        net = Net(parse_text('''input: "x" input_shape { dim: 1 dim: 2 dim: 5 dim: 5 }
            layer { name: "c" type: "Convolution" bottom: "x" top: "y"
                    convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }''',
                             caffe_pb2.NetParameter), TEST)
        net({"x": torch.ones(1, 2, 5, 5)})
        print("torch._dynamo" in sys.modules)"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
