"""Normalization layers: LRN (both regions), BatchNorm, MVN."""

import torch
import torch.nn.functional as F

from caffecam.engine.kernels import cpu_loops
from caffecam.engine.kernels.lrn import lrn_across
from caffecam.engine.kernels.mvn import mvn
from caffecam.engine.layers.base import Layer, register
from caffecam.proto import caffe_pb2

TEST = caffe_pb2.TEST


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

    def rounds_once(self, x):
        """A bfloat16 x on the compiled loops (numba_bf16.py): float32 inside, the top rounded once. Under autocast
        it then stays bfloat16: no float32 copy of GoogLeNet's norm1 and norm2 tops for each reader to cast back
        (a GoogLeNet-CAM bfloat16 training step ×1.05, 11 alternating rounds)."""
        return self.across and x.dtype == torch.bfloat16 and cpu_loops.enabled(x)

    def forward(self, x):
        if self.across:
            return [lrn_across(x, self.size, self.alpha, self.beta, self.k)]
        # WITHIN_CHANNEL: Caffe composes square → AVE pool (n×n, pad (n−1)/2) → power(shift 1, scale alpha):
        # y = x · (1 + alpha · mean of x² over the n×n window, padding counted)^(−beta); k is not used.
        pad = (self.size - 1) // 2
        mean = F.avg_pool2d(x * x, self.size, 1, pad, count_include_pad=True)
        return [x * (1.0 + self.alpha * mean).pow(-self.beta)]


@register()
class BatchNorm(Layer):
    """y = (x − mean_c) / sqrt(var_c + eps) per channel (axis 1), as Caffe's batch_norm_layer.cpp.

    Blobs: the running mean sum, the running variance sum and the scale factor s (shape (1,)); the statistics are
    blob / s, and s = 0 gives 0 (a fresh layer). use_global_stats defaults to true at TEST and false at TRAIN. With
    batch statistics (biased variance) the forward also updates the blobs: s = s·f + 1, mean = batch mean + f·mean,
    var = m/(m−1)·batch var + f·var, with f = moving_average_fraction and m = count / channels. Caffe's backward is
    the exact gradient of this forward (the stored statistics being constants), so autograd computes it.
    The blobs never learn: Caffe forces their lr_mult to 0 and rejects any other value; `fixed_blobs` tells the
    net so (Net.param_specs).
    """

    fixed_blobs = True

    def setup(self, lp, shapes, gen):
        p = lp.batch_norm_param
        self.need_bottoms(shapes, 1)
        if len(shapes[0]) < 2:
            self.fail(f"needs a bottom with a channel axis (N×C…), got {shapes[0]}")
        for i, spec in enumerate(lp.param[:3]):
            if spec.lr_mult != 0:
                self.fail(f"param {i} has lr_mult {spec.lr_mult:g}; the statistics cannot learn (give lr_mult 0 "
                          "or no param)")
        self.channels = shapes[0][1]
        self.use_global = p.use_global_stats if p.HasField("use_global_stats") else self.phase == TEST
        self.fraction, self.eps = p.moving_average_fraction, p.eps
        for shape in ((self.channels,), (self.channels,), (1,)):
            self.add_blob(shape, None, gen)
        return [shapes[0]]

    def forward(self, x):
        dims = [0] + list(range(2, x.dim()))
        view = (1, self.channels) + (1,) * (x.dim() - 2)
        if self.use_global:
            s = self.blobs[2].detach()[0]
            factor = torch.where(s == 0, torch.zeros_like(s), 1 / s)
            mean, var = self.blobs[0].detach() * factor, self.blobs[1].detach() * factor
            centred = x - mean.view(view)
        else:
            mean = x.mean(dims)
            centred = x - mean.view(view)
            var = (centred * centred).mean(dims)
            self._update_running(mean.detach(), var.detach(), x.numel() // self.channels)
        return [centred / (var + self.eps).sqrt().view(view)]

    @torch.no_grad()
    def _update_running(self, mean, var, m):
        f = self.fraction
        self.blobs[2].mul_(f).add_(1)
        self.blobs[0].mul_(f).add_(mean.to(self.blobs[0].dtype))
        correction = m / (m - 1) if m > 1 else 1.0  # Caffe's unbiased variance factor
        self.blobs[1].mul_(f).add_(var.to(self.blobs[1].dtype), alpha=correction)


@register()
class MVN(Layer):
    """Mean-variance normalization per (n, c), or per n with across_channels (Caffe's mvn_layer.cpp):
    y = x − mean, and with normalize_variance y = (x − mean) / (sqrt(var) + eps), eps added to the deviation.
    Caffe reads the bottom through the legacy num/channels/height/width accessors, so its top is always 4-D
    (an N×C bottom gives an N×C×1×1 top). Caffe's backward (kernels/mvn.py) is not the exact gradient."""

    def setup(self, lp, shapes, gen):
        p = lp.mvn_param
        self.need_bottoms(shapes, 1)
        if not 1 <= len(shapes[0]) <= 4:
            self.fail(f"needs a bottom of at most 4 axes (Caffe's legacy N×C×H×W accessors), got {shapes[0]}")
        self.shape4 = tuple(shapes[0]) + (1,) * (4 - len(shapes[0]))
        self.across, self.normalize, self.eps = p.across_channels, p.normalize_variance, p.eps
        return [self.shape4]

    def forward(self, x):
        x = x.reshape(x.shape + (1,) * (4 - x.dim()))
        rows = x.shape[0] if self.across else x.shape[0] * x.shape[1]
        return [mvn(x.reshape(rows, -1), self.normalize, self.eps).view(x.shape)]
