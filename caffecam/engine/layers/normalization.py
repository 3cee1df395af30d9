"""Normalization layers: cross-channel and within-channel LRN."""

import torch.nn.functional as F

from caffecam.engine.kernels.lrn import lrn_across
from caffecam.engine.layers.base import Layer, register


@register()
class LRN(Layer):
    def setup(self, lp, shapes, gen):
        p = lp.lrn_param
        self.need_image_bottom(shapes)
        if p.local_size % 2 == 0:
            self.fail(f"local_size must be odd, got {p.local_size}")
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        self.across = p.norm_region == p.ACROSS_CHANNELS
        return [shapes[0]]

    def forward(self, x):
        if self.across:
            return [lrn_across(x, self.size, self.alpha, self.beta, self.k)]
        # WITHIN_CHANNEL: Caffe composes square → AVE pool (n×n, pad (n−1)/2) → power(shift 1, scale alpha):
        # y = x · (1 + alpha · mean of x² over the n×n window, padding counted)^(−beta); k is not used.
        pad = (self.size - 1) // 2
        mean = F.avg_pool2d(x * x, self.size, 1, pad, count_include_pad=True)
        return [x * (1.0 + self.alpha * mean).pow(-self.beta)]
