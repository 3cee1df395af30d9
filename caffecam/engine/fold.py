"""BatchNorm (+ Scale) folded into the Convolution before it, and a residual sum and ReLU fused into it, for
inference.

At TEST, Caffe's BatchNorm with global statistics is an affine map per channel c (batch_norm_layer.cpp):
    y = (x − μ_c) / sqrt(σ²_c + eps),   μ = blob0 / s,  σ² = blob1 / s,  s = blob2[0] (0 when s = 0),
and a Scale after it (scale_layer.cpp, one value per channel) y = γ_c·x + β_c. Both follow a convolution
x = W_c ∗ in + b_c, so the three are one convolution with
    W'_c = W_c · a_c,   b'_c = (b_c − μ_c) · a_c · γ_c + β_c,   a_c = γ_c / sqrt(σ²_c + eps)
(b_c = 0 without bias_term). An Eltwise sum of the group's output with a blob already computed (ResNet's shortcut,
unit coefficients) and a ReLU (negative_slope 0) after the convolution, the folded group or that sum run inside the
convolution as oneDNN's post-ops (the same floats: a + b is b + a, max(y, 0) is exact). This saves passes over
every such activation (ResNet-50: 53 BatchNorms, 16 sums, 49 ReLUs; GoogLeNet: every convolution's ReLU).

The net's parameters are never changed: a Net with a FoldPlan (Net.fold) computes W', b' from its current blobs
(again whenever a blob is replaced, moved or written, e.g. by copy_weights or load_state_dict) and uses them only
when no gradient is recorded; training, Grad-CAM and caffemodel saving see the unfolded blobs.

A layer joins a group only when nothing else can see the blob it skips: the convolution's output is read by the
BatchNorm (or ReLU) alone, the BatchNorm's by the Scale (or ReLU) alone, and so on, no skipped blob is one the
caller keeps (`keep`), and a forward stopping inside the group (`end`) runs unfolded. CAFFECAM_FOLD=0 in the
environment turns folding off everywhere.
"""

import os
from dataclasses import dataclass

import torch

from caffecam.engine.layers.base import canonical_axis
from caffecam.proto import caffe_pb2


@dataclass
class FoldedConv:
    conv: int  # layer indices in the net
    batch_norm: int | None
    scale: int | None
    relu: int | None
    add: int | None  # an Eltwise sum of this group's output and the blob `other`, done inside the convolution
    other: str | None
    top: str  # the blob the group's last layer writes
    inner_layers: tuple  # layers from the convolution up to (not incl.) the group's last: a forward stopping there
    # would need blobs the folded group does not write
    key: tuple = ()
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


class FoldPlan:
    """The folded groups of a Net: {conv layer index: FoldedConv}, and the layer indices the folding skips."""

    def __init__(self, groups):
        self.groups = {g.conv: g for g in groups}
        self.skipped = {i for g in groups for i in (g.batch_norm, g.scale, g.add, g.relu) if i is not None}
        self.inner_layers = {name for g in groups for name in g.inner_layers}

    def __len__(self):
        return len(self.groups)

    def applies(self, end):
        return bool(self.groups) and not torch.is_grad_enabled() and end not in self.inner_layers

    def forward(self, net, index, blobs):
        """The folded group starting at layer `index`, reading `blobs` -> (blob name, tensor)."""
        g, conv = self.groups[index], net.layers[index]
        x = blobs[net.layer_params[index].bottom[0]]
        if g.batch_norm is not None:
            weight, bias = self._folded(net, g)
        else:
            weight, bias = conv.blobs[0], conv.blobs[1] if conv.bias_term else None
        add = blobs[g.other] if g.add is not None else None
        return g.top, conv.convolve(x, weight, bias, relu=g.relu is not None, add=add)

    def _folded(self, net, g):
        blobs = [b for i in (g.conv, g.batch_norm, g.scale) if i is not None for b in net.layers[i].blobs]
        key = tuple((b.data_ptr(), b._version, b.dtype, b.device, b.stride()) for b in blobs)
        if key != g.key:
            g.weight, g.bias = fold_values(net.layers[g.conv], net.layers[g.batch_norm],
                                           net.layers[g.scale] if g.scale is not None else None)
            g.key = key
        return g.weight, g.bias


@torch.no_grad()
def fold_values(conv, batch_norm, scale=None):
    """(W', b') of the module docstring, worked out in float64 and returned in the weight's dtype and layout."""
    w = conv.blobs[0]
    mean_sum, var_sum, factor = (b.detach().double() for b in batch_norm.blobs)
    s = factor.reshape(-1)[0]
    inv = torch.where(s == 0, torch.zeros_like(s), 1 / s)  # Caffe: a scale factor of 0 reads the statistics as 0
    a = 1 / (var_sum * inv + batch_norm.eps).sqrt()
    mean = mean_sum * inv
    bias = conv.blobs[1].detach().double() if conv.bias_term else torch.zeros_like(a)
    bias = (bias - mean) * a
    if scale is not None:
        gamma = scale.blobs[0].detach().double().reshape(-1)
        a, bias = a * gamma, bias * gamma
        if scale.bias_term:
            bias = bias + scale.blobs[-1].detach().double().reshape(-1)
    view = (-1,) + (1,) * (w.dim() - 1)
    folded_w = (w.detach().double() * a.reshape(view)).to(w.dtype)  # preserve_format: channels_last stays
    return folded_w, bias.to(w.dtype)


def _readers(layer_params, index, blob):
    """Indices of the layers reading the value of `blob` that layer `index` writes: up to and including the next
    layer that writes it again (an in-place layer reads it, then overwrites it)."""
    out = []
    for j in range(index + 1, len(layer_params)):
        lp = layer_params[j]
        if blob in lp.bottom:
            out.append(j)
        if blob in lp.top:
            break
    return out


def _foldable_conv(lp, layer, shape):
    return (lp.type == "Convolution" and len(lp.top) == 1 and layer.axis == 1 and len(layer.blobs)
            and len(shape) >= 3)


def _foldable_bn(lp, layer):
    return lp.type == "BatchNorm" and len(lp.bottom) == 1 and len(lp.top) == 1 and layer.use_global


def _foldable_scale(lp, layer, shape):
    if lp.type != "Scale" or len(lp.bottom) != 1 or len(lp.top) != 1:
        return False
    axis = canonical_axis(lp.scale_param.axis, len(shape), layer)
    return axis == 1 and tuple(layer.blobs[0].shape) == (shape[1],)


def _follower(net, index, keep, accepts):
    """The layer that alone reads what layer `index` writes, when `accepts` it and the skipped blob is not kept."""
    lps = net.layer_params
    top = lps[index].top[0]
    readers = _readers(lps, index, top)
    if len(readers) != 1 or not accepts(readers[0]):
        return None
    nxt = readers[0]
    if top in keep and lps[nxt].top[0] != top:
        return None  # the caller wants this blob's own value, which the group never writes
    return nxt


def _sum_ready_at(net, j, mine, start):
    """Whether layer j is an Eltwise of unit coefficients summing `mine` and one other blob whose value is final
    before layer `start` (where the group runs): written earlier, untouched until j, not the sum's own top."""
    lp = net.layer_params[j]
    p = lp.eltwise_param
    if lp.type != "Eltwise" or p.operation != p.SUM or any(c != 1 for c in p.coeff) or len(lp.bottom) != 2:
        return False
    others = [b for b in lp.bottom if b != mine]
    if len(others) != 1 or lp.top[0] == others[0] or net.blob_shapes[others[0]] != net.blob_shapes[mine]:
        return False
    return not any(others[0] in q.top for q in net.layer_params[start:j])


def plan_folds(net, keep=()):
    """The FoldPlan of a TEST-phase Net: every Convolution → BatchNorm (→ Scale) (→ ReLU) chain, and Convolution →
    ReLU, that can fold (module docstring); `keep`: blobs the caller reads from the forward's result, which must keep
    their own values."""
    if net.phase != caffe_pb2.TEST:
        return FoldPlan([])
    keep, lps, layers, groups = set(keep), net.layer_params, net.layers, []

    def is_bn(j):
        return _foldable_bn(lps[j], layers[j])

    def is_scale(j):
        return _foldable_scale(lps[j], layers[j], net.blob_shapes[lps[j].bottom[0]])

    def is_relu(j):
        lp = lps[j]
        return lp.type == "ReLU" and len(lp.bottom) == 1 and lp.relu_param.negative_slope == 0

    for i, (lp, layer) in enumerate(zip(lps, layers)):
        if not _foldable_conv(lp, layer, net.blob_shapes[lp.top[0]]):
            continue
        bn = _follower(net, i, keep, is_bn)
        scale = _follower(net, bn, keep, is_scale) if bn is not None else None
        last = next(m for m in (scale, bn, i) if m is not None)
        add = _follower(net, last, keep, lambda j, last=last, i=i: _sum_ready_at(net, j, lps[last].top[0], i))
        other = next(b for b in lps[add].bottom if b != lps[last].top[0]) if add is not None else None
        relu = _follower(net, add if add is not None else last, keep, is_relu)
        members = [m for m in (i, bn, scale, add, relu) if m is not None]
        if len(members) == 1:
            continue
        if any(m in net._float32 and lps[m].type != "BatchNorm" for m in members):
            continue  # a layer writing scores a Softmax or loss reads: float32 under autocast (Net._float32)
        last = members[-1]
        groups.append(FoldedConv(i, bn, scale, relu, add, other, lps[last].top[0],
                                 tuple(p.name for p in lps[i:last])))
    return FoldPlan(groups)


def fold_batchnorm(net, keep=()):
    """Give `net` its FoldPlan (Net.forward uses it when no gradient is recorded); returns the number of
    BatchNorm layers folded."""
    net.fold = plan_folds(net, keep) if os.environ.get("CAFFECAM_FOLD", "1") != "0" else FoldPlan([])
    return sum(g.batch_norm is not None for g in net.fold.groups.values())
