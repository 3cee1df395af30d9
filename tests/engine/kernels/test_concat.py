"""Concat's gradients: the values torch.cat's backward gives, in each bottom's own layout."""

import torch

from caffecam.engine.kernels.concat import concat


def grads_through(cat, a, b, top_grad):
    """The gradients reaching two non-leaf bottoms (as in a net, where AccumulateGrad does not re-lay them out)."""
    seen = []
    x, y = a * 1, b * 1
    x.register_hook(lambda g: seen.append(("a", g)))
    y.register_hook(lambda g: seen.append(("b", g)))
    cat([x, y], 1).backward(top_grad)
    return dict(seen)


def test_gradients_equal_torch_cats_in_each_bottoms_layout():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 4, 5, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(2, 5, 4, 5, generator=g).requires_grad_()  # NCHW
    top_grad = torch.randn(2, 8, 4, 5, generator=g).contiguous(memory_format=torch.channels_last)
    ours = grads_through(concat, a, b, top_grad)
    theirs = grads_through(torch.cat, a, b, top_grad)
    assert ours["a"].is_contiguous(memory_format=torch.channels_last) and not ours["a"].is_contiguous()
    assert ours["b"].is_contiguous()
    # torch.cat's own: slices of the channels_last gradient, in neither layout
    assert not theirs["a"].is_contiguous() and not theirs["a"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ours["a"], theirs["a"]) and torch.equal(ours["b"], theirs["b"])
    assert torch.equal(concat([a, b], 1), torch.cat([a, b], 1))


def test_no_gradient_is_plain_cat():
    x = [torch.ones(1, 2), torch.zeros(1, 3)]
    out = concat(x, 1)
    assert out.grad_fn is None and out.tolist() == [[1, 1, 0, 0, 0]]
