"""Winograd F(2×2, 3×3) and F(4×4, 3×3): values against the float64 NumPy convolution, gradients, memory layout,
`suits`, the tile size, the Convolution layer's use of it."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffecam.engine.kernels import winograd
from caffecam.engine.net import Net
from caffecam.engine.prototxt import parse_text
from caffecam.proto import caffe_pb2
from tests import numpy_ref as ref

CL = torch.channels_last


def rel_err(got, expect):
    got = got.detach().double().numpy() if torch.is_tensor(got) else got
    return float(np.abs(got - expect).max() / np.abs(expect).max())


def case(n, c, k, h, w, groups, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, h, w), generator=g)
    wt = torch.randn((k, c // groups, 3, 3), generator=g)
    b = torch.randn((k,), generator=g)
    return x, wt, b


def reference(x, w, b, groups):
    return ref.conv2d(x.double().numpy(), w.double().numpy(), None if b is None else b.double().numpy(),
                      pad=(1, 1), group=groups)


SHAPES = [  # n, c, k, h, w, groups
    (1, 4, 6, 5, 7, 1), (2, 4, 6, 1, 1, 1), (3, 4, 4, 2, 3, 1), (2, 8, 6, 6, 6, 2), (1, 8, 8, 7, 4, 4),
    (2, 8, 12, 9, 5, 4), (2, 6, 4, 4, 9, 2), (1, 3, 5, 3, 1, 1),
]


@pytest.mark.parametrize("n,c,k,h,w,groups", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_forward_matches_float64_reference(n, c, k, h, w, groups, bias, layout):
    x, wt, b = case(n, c, k, h, w, groups, seed=h * 10 + w)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    b = b if bias else None
    y = winograd.conv3x3(x, wt, b, groups)
    assert y.shape == (n, k, h, w) and y.dtype == torch.float32
    assert rel_err(y, reference(x, wt, b, groups)) < 1e-5


@pytest.mark.parametrize("groups", [1, 2])
def test_gradcheck_float64(groups):
    x, w, b = (t.double().requires_grad_() for t in case(2, 4, 6, 5, 6, groups, seed=groups))
    assert torch.autograd.gradcheck(lambda *a: winograd.conv3x3(*a, groups=groups), (x, w, b))
    x, w = (t.double().requires_grad_() for t in case(1, 4, 4, 3, 1, groups, seed=7)[:2])
    assert torch.autograd.gradcheck(lambda *a: winograd.conv3x3(*a, groups=groups), (x, w))


@pytest.mark.parametrize("wants", ["weight", "x", "bias"])
def test_gradient_of_one_input_only(wants):
    """needs_input_grad: each gradient alone equals F.conv2d's (float64, so no rounding in the way)."""
    x, w, b = (t.double() for t in case(2, 8, 6, 5, 4, 2, seed=3))
    gy = torch.randn((2, 6, 5, 4), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    args = {"x": x, "weight": w, "bias": b}
    args[wants] = args[wants].clone().requires_grad_()
    (got,) = torch.autograd.grad((winograd.conv3x3(args["x"], args["weight"], args["bias"], 2) * gy).sum(),
                                 args[wants])
    expect_args = {name: t.detach().clone().requires_grad_(name == wants) for name, t in args.items()}
    y = F.conv2d(expect_args["x"], expect_args["weight"], expect_args["bias"], padding=1, groups=2)
    (expect,) = torch.autograd.grad((y * gy).sum(), expect_args[wants])
    torch.testing.assert_close(got, expect, rtol=1e-10, atol=1e-10)


def test_weight_gradient_against_numpy():
    """dW[o,c,i,j] = Σ dY[n,o,y,x] · Xpad[n,c,y+i,x+j], written out in NumPy; db = Σ dY."""
    x, w, b = case(2, 4, 6, 5, 3, 1, seed=11)
    w.requires_grad_()
    b.requires_grad_()
    gy = np.random.default_rng(5).standard_normal((2, 6, 5, 3))
    (winograd.conv3x3(x, w, b) * torch.from_numpy(gy).float()).sum().backward()
    xp = np.pad(x.double().numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)))
    dw = np.zeros((6, 4, 3, 3))
    for i in range(3):
        for j in range(3):
            dw[:, :, i, j] = np.einsum("noyx,ncyx->oc", gy, xp[:, :, i:i + 5, j:j + 3])
    assert rel_err(w.grad, dw) < 1e-5
    assert rel_err(b.grad, gy.sum((0, 2, 3))) < 1e-5


@pytest.mark.parametrize("shape", [(2, 8, 6, 6), (2, 8, 5, 7), (3, 8, 1, 1), (1, 8, 6, 6), (1, 8, 5, 7)])
def test_output_is_fresh_channels_last_and_allows_inplace_relu(shape):
    x, w, b = case(*shape[:2], 8, *shape[2:], 1, seed=1)
    x.requires_grad_()
    w.requires_grad_()
    y = winograd.conv3x3(x, w, b)
    assert y._base is None and y.is_contiguous(memory_format=CL)
    F.relu_(y)  # under autograd: allowed only on a tensor that is not a view made inside the Function
    y.sum().backward()
    mask = torch.from_numpy(reference(x.detach(), w.detach(), b, 1) > 0).float()
    gx_expect = F.conv_transpose2d(mask, w.detach(), padding=1)
    torch.testing.assert_close(x.grad, gx_expect, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert winograd.conv3x3(x, w, b)._base is None


# For batch 1 with odd H and even W (or H = 1) the crop of the padded output is already channels_last-contiguous:
# it must still come back as a tensor of its own, or an in-place ReLU after it fails under autograd.
@pytest.mark.parametrize("shape", [(1, 8, 5, 6), (1, 8, 1, 7)])
def test_batch1_odd_height_even_width_output_is_not_a_view(shape):
    x, w, b = case(*shape[:2], 8, *shape[2:], 1, seed=2)
    w.requires_grad_()
    y = winograd.conv3x3(x, w, b)
    F.relu_(y)
    y.sum().backward()
    assert y._base is None


def test_float32_error_is_of_the_order_of_direct_convolution():
    x, w, b = case(4, 64, 32, 14, 13, 1, seed=21)
    expect = F.conv2d(x.double(), w.double(), b.double(), padding=1).numpy()  # checked against ref in the tests above
    direct = rel_err(F.conv2d(x, w, b, padding=1), expect)
    wino = rel_err(winograd.conv3x3(x, w, b), expect)
    assert 0 < wino < 1e-5
    assert wino < 10 * max(direct, 1e-8)
    assert rel_err(winograd.conv3x3(x, w, b), F.conv2d(x, w, b, padding=1).double().numpy()) < 1e-5
    # the float64 check of the 'expect' above, on a slice of the output channels
    assert rel_err(expect[:1, :4], reference(x[:1], w[:4], b[:4], 1)) < 1e-12


# -- suits ---------------------------------------------------------------------------------------------------

def suits_args(**change):
    args = {"x": torch.empty((32, 832, 14, 14)), "weight": torch.empty((1024, 416, 3, 3)), "stride": (1, 1),
            "pad": (1, 1), "dilation": (1, 1), "group": 2}
    args.update(change)
    return args


def test_suits_inception_width_layer():
    assert winograd.suits(**suits_args())
    assert winograd.suits(**suits_args(x=torch.empty((32, 832, 14, 14), memory_format=CL)))


@pytest.mark.parametrize("change", [
    {"stride": (2, 2)}, {"stride": (1, 2)}, {"pad": (0, 0)}, {"pad": (2, 2)}, {"dilation": (2, 2)},
    {"weight": torch.empty((1024, 416, 5, 5))}, {"weight": torch.empty((1024, 416, 1, 1))},
    {"x": torch.empty((32, 832, 14, 14), dtype=torch.float64)},
    {"x": torch.empty((8, 64, 14, 14)), "weight": torch.empty((128, 64, 3, 3)), "group": 1},  # few inputs (2×2)
    {"x": torch.empty((32, 256, 14, 14)), "weight": torch.empty((48, 256, 3, 3)), "group": 1},  # few outputs
    {"x": torch.empty((32, 48, 28, 28)), "weight": torch.empty((128, 48, 3, 3)), "group": 1},  # few inputs (4×4)
    {"group": 32, "x": torch.empty(1).expand(32, 6656, 14, 14)},  # 32 outputs per group
    {"x": torch.empty((1, 832, 14, 14))},  # 49 tiles
])
def test_suits_rejects(change):
    assert not winograd.suits(**suits_args(**change))


def test_suits_takes_64_channels_with_4x4_tiles_only(monkeypatch):
    """conv2/3x3's shape at batch 32: 64 channels in; with F(4×4) (MIN_CHANNELS_4), not with F(2×2) (MIN_CHANNELS),
    nor where the input is under MIN_ELEMENTS_4 (batch 1: 4×4 tiles would load numba for a small job)."""
    x, w = torch.empty((32, 64, 56, 56)), torch.empty((192, 64, 3, 3))
    from caffecam.engine.kernels import cpu_loops
    if cpu_loops._load() is False:
        assert not winograd.suits(x, w, (1, 1), (1, 1), (1, 1), 1)
        return
    assert winograd.tile_size(x) == 4 and winograd.suits(x, w, (1, 1), (1, 1), (1, 1), 1)
    assert winograd.tile_size(x[:1]) == 2 and not winograd.suits(x[:1], w, (1, 1), (1, 1), (1, 1), 1)
    monkeypatch.setattr(winograd, "TILE4", False)
    assert not winograd.suits(x, w, (1, 1), (1, 1), (1, 1), 1)


def test_suits_thresholds_and_switch(monkeypatch):
    c = winograd.MIN_CHANNELS
    w = torch.empty((c, c, 3, 3))
    tiles = winograd.MIN_TILES  # an N×2×2 input has N tiles
    assert winograd.suits(torch.empty((tiles, c, 2, 2)), w, (1, 1), (1, 1), (1, 1), 1)
    assert not winograd.suits(torch.empty((tiles - 1, c, 2, 2)), w, (1, 1), (1, 1), (1, 1), 1)
    assert winograd.suits(torch.empty((tiles, c, 1, 1)), w, (1, 1), (1, 1), (1, 1), 1)  # odd sizes round up
    monkeypatch.setattr(winograd, "ENABLED", False)
    assert not winograd.suits(**suits_args())


# -- through the Convolution layer ---------------------------------------------------------------------------

CONV_NET = """
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 8 dim: 128 dim: 14 dim: 14 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 128 kernel_size: 3 pad: 1 {engine}
    weight_filler {{ type: "gaussian" std: 0.05 }} bias_filler {{ type: "gaussian" std: 1 }} }} }}
"""


def conv_net(engine=""):
    return Net(parse_text(CONV_NET.format(engine=engine), caffe_pb2.NetParameter), seed=0)


def check_net_output(net, monkeypatch, expect_winograd):
    calls = []
    real = winograd.conv3x3

    def spy(*args, **kwargs):
        if not expect_winograd:
            raise AssertionError("winograd.conv3x3 called for an engine: CAFFE layer")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(winograd, "conv3x3", spy)
    x = torch.randn((8, 128, 14, 14), generator=torch.Generator().manual_seed(0))
    w, b = net.params["conv"]
    assert winograd.suits(x, w, (1, 1), (1, 1), (1, 1), 1)
    y = net(x)["conv"].detach()  # a forward recording gradients, as in training
    assert len(calls) == int(expect_winograd)
    # The reference costs a loop per output channel; 24 channels of the 128 are enough to catch a wrong layer.
    assert rel_err(y[:, :24], reference(x, w[:24].detach(), b[:24].detach(), 1)) < 1e-5


def test_convolution_layer_uses_winograd(monkeypatch):
    check_net_output(conv_net(), monkeypatch, True)


def test_engine_caffe_uses_direct_convolution(monkeypatch):
    check_net_output(conv_net("engine: CAFFE"), monkeypatch, False)


CONV_RELU_NET = CONV_NET + 'layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}\n'


def test_forward_without_gradient_runs_winograd_with_the_relu_inside(monkeypatch):
    from caffecam.engine.kernels import cpu_loops
    if cpu_loops._load() is False:
        pytest.skip("numba is not installed")
    from caffecam.engine.fold import fold_batchnorm
    net = Net(parse_text(CONV_RELU_NET.format(engine=""), caffe_pb2.NetParameter), seed=0)
    fold_batchnorm(net)  # as cam.py and extract_features.py do: the ReLU runs inside the convolution
    calls = []
    real = winograd.conv3x3_inference
    monkeypatch.setattr(winograd, "conv3x3_inference", lambda *a: calls.append(a[4]) or real(*a))
    x = torch.randn((8, 128, 14, 14), generator=torch.Generator().manual_seed(0)).contiguous(memory_format=CL)
    w, b = net.params["conv"]
    expect = np.maximum(reference(x, w[:24].detach(), b[:24].detach(), 1), 0)
    with torch.inference_mode():
        y = net(x)["conv"]
    assert calls == [True]  # the ReLU folded into the convolution (engine/fold.py), then into the transform
    assert rel_err(y[:, :24], expect) < 1e-5
    # a weight written in place, then a new weight tensor: the kept transformed filters follow both
    with torch.no_grad():
        w.mul_(-1)
    with torch.inference_mode():
        y = net(x)["conv"]
    assert rel_err(y[:, :24], np.maximum(reference(x, w[:24].detach(), b[:24].detach(), 1), 0)) < 1e-5
    net.layers[1].blobs[0] = torch.nn.Parameter(w.detach() * 0.5)
    with torch.inference_mode():
        y = net(x)["conv"]
    half = net.params["conv"][0]
    assert rel_err(y[:, :24], np.maximum(reference(x, half[:24].detach(), b[:24].detach(), 1), 0)) < 1e-5
    # without the compiled transforms a forward alone is oneDNN's direct convolution
    monkeypatch.setattr(cpu_loops, "ENABLED", False)
    calls.clear()
    with torch.inference_mode():
        net(x)
    assert calls == []


def test_inference_tensor_weight():
    # A Net built inside inference_mode has inference-tensor weights (no version counter): still computed.
    with torch.inference_mode():
        x, w, b = case(1, 4, 4, 4, 4, 1, seed=14)
        y = winograd.conv3x3(x, w, b)
    assert rel_err(y, reference(x, w, b, 1)) < 1e-5


@pytest.mark.parametrize("n,c,k,h,w,groups", SHAPES + [(2, 40, 24, 11, 14, 2)])
def test_compiled_transforms_give_the_same_floats(n, c, k, h, w, groups, monkeypatch):
    """float32 on the CPU runs the tile transforms as compiled loops (cpu_loops); they must compute exactly what
    the PyTorch composition computes: the same output, input gradient and filter gradient, bit for bit."""
    from caffecam.engine.kernels import cpu_loops
    if cpu_loops._load() is False:
        pytest.skip("numba is not installed")
    x, wt, b = case(n, c, k, h, w, groups, seed=n + c + h)
    dy = torch.randn((n, k, h, w), generator=torch.Generator().manual_seed(9))
    results = []
    for loops in (True, False):
        monkeypatch.setattr(cpu_loops, "ENABLED", loops)
        xs, ws, bs = (t.clone().requires_grad_() for t in (x.contiguous(memory_format=CL), wt, b))
        y = winograd.conv3x3(xs, ws, bs, groups, tile=2)  # F(4×4) has no PyTorch composition
        y.backward(dy)
        results.append((y.detach(), xs.grad, ws.grad, bs.grad))
    for fast, plain in zip(*results):
        assert torch.equal(fast, plain)


# -- F(4×4, 3×3): compiled loops only ------------------------------------------------------------------------

def needs_loops():
    from caffecam.engine.kernels import cpu_loops
    if cpu_loops._load() is False:
        pytest.skip("numba is not installed")


def test_tile4_matrices_are_a_minimal_filtering_algorithm():
    """Aᵀ [(G g) ⊙ (Bᵀ d)] is the 4-output correlation y_i = Σ_k g_k d_(i+k) of a 6-value d with a 3-value g, for
    every d and g: checked on the basis (36 × 3 products, each exactly 0 or 1 in float64) and on random values."""
    at, g_mat, bt = (np.asarray(m, np.float64) for m in (winograd.AT4, winograd.G4, winograd.BT4))
    assert at.shape == (4, 6) and g_mat.shape == (6, 3) and bt.shape == (6, 6)
    for k in range(3):
        for j in range(6):
            g, d = np.eye(3)[k], np.eye(6)[j]
            expect = np.array([float(i + k == j) for i in range(4)])
            np.testing.assert_allclose(at @ ((g_mat @ g) * (bt @ d)), expect, atol=1e-12)
    rng = np.random.default_rng(0)
    g, d = rng.standard_normal(3), rng.standard_normal(6)
    np.testing.assert_allclose(at @ ((g_mat @ g) * (bt @ d)), np.correlate(d, g, "valid"), rtol=1e-12)


@pytest.mark.parametrize("n,c,k,h,w,groups", SHAPES + [(2, 16, 8, 14, 14, 2), (1, 8, 4, 28, 9, 1)])
def test_tile4_forward_matches_float64_reference(n, c, k, h, w, groups):
    needs_loops()
    x, wt, b = case(n, c, k, h, w, groups, seed=h * 7 + w)
    y = winograd.conv3x3(x.contiguous(memory_format=CL), wt, b, groups, tile=4)
    assert y.shape == (n, k, h, w) and y.is_contiguous(memory_format=CL)
    assert rel_err(y, reference(x, wt, b, groups)) < 1e-5


@pytest.mark.parametrize("n,c,k,h,w,groups", [(2, 8, 6, 9, 7, 1), (1, 8, 8, 14, 14, 2), (3, 16, 12, 5, 3, 4),
                                              (2, 4, 4, 1, 1, 1), (1, 6, 4, 28, 13, 2), (2, 4, 8, 8, 4, 1)])
@pytest.mark.parametrize("wants", ["all", "x"])
def test_tile4_gradients_match_float64_convolution(n, c, k, h, w, groups, wants):
    """dx, dW and db of F(4×4) in float32 against F.conv2d's in float64; dx also alone (frozen filters: the input
    adjoint still needs the tiles' gradient gM). Tile rows 1 to 7, odd and even counts (the adjoint's two phases)."""
    needs_loops()
    x, wt, b = case(n, c, k, h, w, groups, seed=c + h)
    gy = torch.randn((n, k, h, w), generator=torch.Generator().manual_seed(6))
    ours = [t.clone().requires_grad_(wants == "all" or i == 0)
            for i, t in enumerate((x.contiguous(memory_format=CL), wt, b))]
    (winograd.conv3x3(*ours, groups, tile=4) * gy).sum().backward()
    exact = [t.double().requires_grad_() for t in (x, wt, b)]
    (F.conv2d(*exact, padding=1, groups=groups) * gy.double()).sum().backward()
    for mine, ref64 in zip(ours, exact):
        if mine.requires_grad:
            assert rel_err(mine.grad, ref64.grad.numpy()) < 1e-5
        else:
            assert mine.grad is None


def test_tile4_error_on_wide_relu_input():
    """The rounding F(4×4) adds, on CAM_conv-like input (416 ReLU'd channels per group, 14×14): 5e-6 of the largest
    output measured (the docstring's figure), against 7e-7 for F(2×2); a wrong coefficient would give 1e-1."""
    needs_loops()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((2, 832, 14, 14), generator=gen).relu_().contiguous(memory_format=CL)
    wt = torch.randn((32, 416, 3, 3), generator=gen) * 0.02
    expect = F.conv2d(x.double(), wt.double(), padding=1, groups=2).numpy()
    err4 = rel_err(winograd.conv3x3(x, wt, None, 2, tile=4), expect)
    err2 = rel_err(winograd.conv3x3(x, wt, None, 2, tile=2), expect)
    assert err2 < 2e-6 and err4 < 1.5e-5


@pytest.mark.parametrize("hw,tile", [((14, 14), 4), ((7, 7), 4), ((56, 56), 4), ((28, 9), 4), ((6, 6), 2),
                                     ((5, 5), 2), ((2, 2), 2), ((14, 2), 2)])
def test_tile_size_takes_4x4_where_it_needs_fewer_products(hw, tile, monkeypatch):
    needs_loops()
    monkeypatch.setattr(winograd, "MIN_ELEMENTS_4", 0)
    assert winograd.tile_size(torch.empty((1, 8) + hw)) == tile


def test_tile_size_is_2_without_the_loops_or_when_asked(monkeypatch):
    needs_loops()
    from caffecam.engine.kernels import cpu_loops
    monkeypatch.setattr(winograd, "MIN_ELEMENTS_4", 0)
    x = torch.empty((1, 8, 14, 14))
    assert winograd.tile_size(x) == 4
    assert winograd.tile_size(x.double()) == 2  # the loops take float32 only
    monkeypatch.setattr(winograd, "TILE4", False)  # CAFFECAM_WINOGRAD=2
    assert winograd.tile_size(x) == 2
    monkeypatch.setattr(winograd, "TILE4", True)
    monkeypatch.setattr(winograd, "MIN_ELEMENTS_4", x.numel() + 1)  # too small
    assert winograd.tile_size(x) == 2
    monkeypatch.setattr(winograd, "MIN_ELEMENTS_4", 0)
    monkeypatch.setattr(cpu_loops, "ENABLED", False)
    assert winograd.tile_size(x) == 2


def test_tile4_inference_keeps_filters_per_tile_size(monkeypatch):
    """conv3x3_inference keeps the transformed filters on the layer: a change of tile size transforms them again."""
    needs_loops()
    monkeypatch.setattr(winograd, "MIN_ELEMENTS_4", 0)
    x, wt, b = case(2, 8, 6, 14, 14, 1, seed=5)
    x = x.contiguous(memory_format=CL)

    class Holder:
        pass

    holder, expect = Holder(), reference(x, wt, b, 1)
    with torch.no_grad():
        for tile4 in (True, False, True):
            monkeypatch.setattr(winograd, "TILE4", tile4)
            y = winograd.conv3x3_inference(x, wt, b, 1, False, holder)
            assert holder._winograd_filters[2].shape[1] == (36 if tile4 else 16)
            assert rel_err(y, expect) < 1e-5
