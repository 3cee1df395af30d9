"""Caffe's Eltwise MAX and PROD gradients (eltwise_layer.cpp), where they are not plain autograd.

MAX: Caffe keeps the index of the winning bottom per element and routes the whole top diff to it. Between
bottoms 0 and 1 a tie goes to bottom 1 (`a > b` picks a, else b); a later bottom wins only when strictly greater.
A chain of torch.where in that order routes autograd's gradient the same way.

PROD: with stable_prod_grad (the default) bottom i's diff is dy · Π_{j≠i} x_j, which autograd through the product
computes. Without it Caffe divides: dy · top / x_i, which is inf or NaN where x_i = 0; that needs its own backward.
"""

import torch


def eltwise_max(xs):
    out = torch.where(xs[0] > xs[1], xs[0], xs[1])
    for x in xs[2:]:
        out = torch.where(x > out, x, out)
    return out


class _QuotientProd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *xs):
        top = xs[0] * xs[1]
        for x in xs[2:]:
            top = top * x
        ctx.save_for_backward(top, *xs)
        return top

    @staticmethod
    def backward(ctx, dy):
        top, *xs = ctx.saved_tensors
        return tuple(top / x * dy for x in xs)


def eltwise_prod(xs, stable_grad=True):
    if not stable_grad:
        return _QuotientProd.apply(*xs)
    top = xs[0] * xs[1]
    for x in xs[2:]:
        top = top * x
    return top
