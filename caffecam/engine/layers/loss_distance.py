"""Caffe's distance and margin losses: EuclideanLoss, ContrastiveLoss, HingeLoss. N is the first dimension."""

import math

import torch
import torch.nn.functional as F

from caffecam.engine.layers.base import Layer, register
from caffecam.proto import caffe_pb2


def _need_pair(layer, shapes, n_bottoms):
    layer.need_bottoms(shapes, n_bottoms)
    if shapes[0][:1] != shapes[1][:1]:  # LossLayer::Reshape
        layer.fail(f"bottoms 0 and 1 need the same first dimension, got {shapes[0]} and {shapes[1]}")


@register()
class EuclideanLoss(Layer):
    """loss = Σ (a − b)² / (2N); both bottoms get a gradient (euclidean_loss_layer.cpp)."""

    def setup(self, lp, shapes, gen):
        _need_pair(self, shapes, 2)
        if math.prod(shapes[0][1:]) != math.prod(shapes[1][1:]):
            self.fail(f"inputs need the same dimension per sample, got shapes {shapes[0]} and {shapes[1]}")
        return [()]

    def forward(self, a, b):
        diff = a - b.reshape(a.shape)
        return [(diff * diff).sum() / a.shape[0] / 2]


@register()
class ContrastiveLoss(Layer):
    """Pairs (a_n, b_n) with y_n = 1 similar, 0 dissimilar (int(y) != 0 is similar), d_n = ‖a_n − b_n‖:

        loss = Σ_n [similar: d²;  dissimilar: max(margin − d, 0)²  (legacy_version: max(margin − d², 0))] / (2N)

    Caffe's gradient of a dissimilar pair (new version) divides by d + 1e-4 instead of d, and a pair at
    margin − d ≤ 0 gets none (contrastive_loss_layer.cpp, Backward_cpu). y gets no gradient."""

    def setup(self, lp, shapes, gen):
        _need_pair(self, shapes, 3)
        (a, b, y) = [tuple(s) + (1,) * (4 - len(s)) for s in shapes]
        if len(shapes[0]) > 4 or a[1] != b[1] or a[2:] != (1, 1) or b[2:] != (1, 1) or y[1:] != (1, 1, 1):
            self.fail(f"needs N×C×1×1 pairs and an N×1×1×1 similarity, got {shapes[0]}, {shapes[1]}, {shapes[2]}")
        p = lp.contrastive_loss_param
        self.margin, self.legacy = p.margin, p.legacy_version
        return [()]

    def forward(self, a, b, y):
        n = a.shape[0]
        diff = (a - b).reshape(n, -1)
        dist_sq = (diff * diff).sum(1)
        similar = y.detach().reshape(-1).trunc() != 0
        if self.legacy:
            apart = F.relu(self.margin - dist_sq)
        else:
            dist = dist_sq.detach().sqrt()
            gap = F.relu(self.margin - dist)
            # Value gap², gradient −2·gap/(d + 1e-4)·(a − b) through d² (never through the sqrt, so d = 0 is safe).
            push = -gap / (dist + 1e-4) * dist_sq
            apart = gap * gap + (push - push.detach())
        return [torch.where(similar, dist_sq, apart).sum() / n / 2]


@register()
class HingeLoss(Layer):
    """Per sample, t_j = −x_j at the label and x_j elsewhere (x flattened per sample), m_j = max(0, 1 + t_j):

        loss = Σ m / N (L1),  Σ m² / N (L2)        (hinge_loss_layer.cpp)

    Not reproduced: Caffe's forward uses the bottom's diff as scratch space, so with loss_weight 0 (its backward
    skipped) m leaks into the gradient of a blob that other layers also read."""

    def setup(self, lp, shapes, gen):
        _need_pair(self, shapes, 2)
        self.squared = lp.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2
        return [()]

    def forward(self, x, label):
        n = x.shape[0]
        flat = x.reshape(n, -1)
        label = label.detach().reshape(-1)[:n].long()
        if bool(((label < 0) | (label >= flat.shape[1])).any()):
            self.fail(f"a label is out of range for {flat.shape[1]} values per sample")
        sign = torch.ones_like(flat).scatter_(1, label[:, None], -1.0)
        margin = F.relu(1 + sign * flat)
        return [(margin * margin if self.squared else margin).sum() / n]
