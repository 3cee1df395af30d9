"""Vision layers (Caffe's vision_layers family), convolution side: Convolution, Deconvolution, Im2col, Crop.
Pooling and SPP are in pooling.py.

Convolution, Deconvolution and Im2col read their geometry from convolution_param as base_conv_layer.cpp does: the
channel axis is `axis` (default 1), every later axis is spatial (1 to 3 of them here), the axes before it are
flattened into the batch; kernel_size/stride/pad/dilation give one value for every spatial axis or one each, and
kernel_h/_w, stride_h/_w, pad_h/_w are the 2-D form.
"""

import math

import torch
import torch.nn.functional as F

from caffecam.engine.kernels import winograd
from caffecam.engine.layers.base import Layer, canonical_axis, register

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def spatial_values(layer, p, name, hw_name, n, default):
    """One value per spatial axis from `name` (0 values: default, 1: every axis, n: one each) or hw_name_h/_w."""
    values = list(getattr(p, name))
    if hw_name and (p.HasField(f"{hw_name}_h") or p.HasField(f"{hw_name}_w")):
        if n != 2:
            layer.fail(f"{hw_name}_h/{hw_name}_w are for 2-D convolution only; this bottom has {n} spatial axes")
        if values:
            layer.fail(f"give either {name} or {hw_name}_h/{hw_name}_w, not both")
        return getattr(p, f"{hw_name}_h"), getattr(p, f"{hw_name}_w")
    if not values:
        if default is None:
            layer.fail(f"{name} is required")
        return (default,) * n
    if len(values) not in (1, n):
        layer.fail(f"{name} has {len(values)} values; give one, or one per spatial axis ({n})")
    return tuple(int(v) for v in values) * (n if len(values) == 1 else 1)


class ConvGeometry(Layer):
    """Reads convolution_param into self.axis, self.kernel, self.stride, self.pad, self.dilation (per spatial axis)."""

    def read_geometry(self, p, shape, max_spatial=3):
        self.need_hw_pairs(p, ("kernel", "stride"))  # a lone pad_h or pad_w is fine: Caffe takes the other as 0
        self.axis = canonical_axis(p.axis, len(shape), self)
        n = len(shape) - self.axis - 1
        if not 1 <= n <= max_spatial:
            self.fail(f"channel axis {self.axis} of a {len(shape)}-D bottom {shape} leaves {n} spatial axes; "
                      f"1 to {max_spatial} are supported")
        self.kernel = spatial_values(self, p, "kernel_size", "kernel", n, None)
        self.stride = spatial_values(self, p, "stride", "stride", n, 1)
        self.pad = spatial_values(self, p, "pad", "pad", n, 0)
        self.dilation = spatial_values(self, p, "dilation", None, n, 1)
        self.need_positive(kernel=self.kernel, stride=self.stride, dilation=self.dilation)
        # kernel extent = dilation·(k − 1) + 1
        self.extent = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel))
        return shape[:self.axis], shape[self.axis], shape[self.axis + 1:]

    def conv_out(self, spatial):
        """out = floor((in + 2·pad − extent) / stride) + 1 per spatial axis."""
        out = tuple((s + 2 * p - e) // st + 1 for s, p, e, st in zip(spatial, self.pad, self.extent, self.stride))
        if min(out) < 1:
            self.fail(f"kernel {self.kernel} (dilation {self.dilation}) does not fit the input {spatial} "
                      f"(with pad {self.pad})")
        return out

    def as_batch(self, x):
        """x with the axes before the channel axis flattened into one batch axis."""
        return x.reshape((-1,) + tuple(x.shape[self.axis:]))

    def unbatch(self, y, x):
        """y with x's leading axes back; y itself when they are one batch axis already (a reshape to the same shape
        is a view, and an in-place ReLU on a view makes autograd copy the whole top back (CopySlices): 9% of a
        GoogLeNet-CAM training step)."""
        shape = tuple(x.shape[:self.axis]) + tuple(y.shape[1:])
        return y if tuple(y.shape) == shape else y.reshape(shape)

    def read_learned(self, p, channels, weight_shape, gen):
        self.group = p.group
        self.need_positive(group=(self.group,))
        if p.num_output == 0:
            self.fail("num_output is required")
        if channels % self.group or p.num_output % self.group:
            self.fail(f"channels ({channels}) and num_output ({p.num_output}) must be multiples of group "
                      f"({self.group})")
        self.add_blob(weight_shape, p.weight_filler if p.HasField("weight_filler") else None, gen)
        self.bias_term = p.bias_term
        if p.bias_term:
            self.add_blob((p.num_output,), p.bias_filler if p.HasField("bias_filler") else None, gen)


@register()
class Convolution(ConvGeometry):
    def setup(self, lp, shapes, gen):
        p = lp.convolution_param
        self.need_bottoms(shapes, 1)
        lead, c, spatial = self.read_geometry(p, shapes[0])
        out = self.conv_out(spatial)
        self.read_learned(p, c, (p.num_output, c // max(p.group, 1)) + self.kernel, gen)
        # engine CAFFE asks for Caffe's own algorithm (direct convolution); DEFAULT and CUDNN let the engine choose.
        self.winograd_allowed = p.engine != p.CAFFE and len(self.kernel) == 2 and len(shapes[0]) == 4
        return [lead + (p.num_output,) + out]

    def forward(self, x):
        return [self.convolve(x, self.blobs[0], self.blobs[1] if self.bias_term else None)]

    def convolve(self, x, weight, bias, relu=False, add=None):
        """This layer's convolution with the given weight and bias (engine/fold.py passes folded ones), plus the
        tensor `add` (an Eltwise sum), then max(·, 0) with `relu`: oneDNN's post-ops on the CPU in float32, no
        further pass over the output (the same floats: conv + add is add + conv, and max(·, 0) is exact).

        Winograd for the layers it suits (winograd.suits), in training and, with its compiled transforms, in a
        forward alone, where the ReLU runs inside its output transform (GoogLeNet-CAM's CAM_conv at batch 32:
        106 -> 91 ms forward)."""
        if self.winograd_allowed and winograd.suits(x, weight, self.stride, self.pad, self.dilation, self.group):
            if torch.is_grad_enabled():
                return self._post(winograd.conv3x3(x, weight, bias, self.group), relu, add)
            if add is None and winograd.pays_at_inference(x):
                return winograd.conv3x3_inference(x, weight, bias, self.group, relu, self)
        if (relu or add is not None) and self._fused_post_ops_run(x, weight, add):
            geometry = list(self.pad), list(self.stride), list(self.dilation), self.group
            if add is None:
                return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, "relu", [], "")
            return torch.ops.mkldnn._convolution_pointwise.binary(x, add, weight, bias, *geometry, "add", None,
                                                                  "relu" if relu else None, [], "")
        conv = CONV[len(self.kernel)]
        y = conv(self.as_batch(x), weight, bias, self.stride, self.pad, self.dilation, self.group)
        return self._post(self.unbatch(y, x), relu, add)

    @staticmethod
    def _post(y, relu, add):
        if add is not None:
            y = y.add_(add)
        return F.relu_(y) if relu else y

    def _fused_post_ops_run(self, x, weight, add):
        return (x.device.type == "cpu" and x.dim() == 4 and self.axis == 1 and not torch.is_grad_enabled()
                and x.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and (add is None or add.dtype == torch.float32) and torch.backends.mkldnn.is_available())


@register()
class Deconvolution(ConvGeometry):
    """The adjoint of Convolution: weight (C_in, num_output / group, k…), deconv_layer.cpp's output size
    out = stride·(in − 1) + dilation·(k − 1) + 1 − 2·pad."""

    def setup(self, lp, shapes, gen):
        p = lp.convolution_param
        self.need_bottoms(shapes, 1)
        lead, c, spatial = self.read_geometry(p, shapes[0])
        out = tuple(st * (s - 1) + e - 2 * pd for s, st, e, pd in zip(spatial, self.stride, self.extent, self.pad))
        if min(out) < 1:
            self.fail(f"output size {out} is empty: pad {self.pad} is too large for input {spatial}")
        self.read_learned(p, c, (c, p.num_output // max(p.group, 1)) + self.kernel, gen)
        return [lead + (p.num_output,) + out]

    def forward(self, x):
        bias = self.blobs[1] if self.bias_term else None
        conv_t = CONV_T[len(self.kernel)]
        y = conv_t(self.as_batch(x), self.blobs[0], bias, self.stride, self.pad, 0, self.group, self.dilation)
        return [self.unbatch(y, x)]


@register()
class Im2col(ConvGeometry):
    """im2col_layer.cpp: each output position's receptive field as channels, C·∏k of them ordered channel-major, then
    kernel rows, then kernel columns (Caffe's column buffer, as convolution uses it); zero padding."""

    def setup(self, lp, shapes, gen):
        p = lp.convolution_param
        self.need_bottoms(shapes, 1)
        lead, c, spatial = self.read_geometry(p, shapes[0], max_spatial=2)
        return [lead + (c * math.prod(self.kernel),) + self.conv_out(spatial)]

    def forward(self, x):
        xb = self.as_batch(x)
        unit = (1,) * (2 - len(self.kernel))  # a 1-D bottom runs as 2-D with a unit height
        cols = F.unfold(xb.reshape(tuple(xb.shape[:2]) + unit + tuple(xb.shape[2:])), unit + self.kernel,
                        unit + self.dilation, (0,) * len(unit) + self.pad, unit + self.stride)
        out = self.conv_out(tuple(x.shape[self.axis + 1:]))
        return [cols.reshape(tuple(x.shape[:self.axis]) + (cols.shape[1],) + out)]


@register()
class Crop(Layer):
    """crop_layer.cpp: bottom 0 cut to the shape of bottom 1 on every axis from `axis` (default 2) on, starting at
    `offset` (none: 0, one: all those axes, else one per axis); earlier axes keep bottom 0's size. Only bottom 0
    gets a gradient (zero outside the crop)."""

    def setup(self, lp, shapes, gen):
        p = lp.crop_param
        self.need_bottoms(shapes, 2)
        data, ref = shapes
        if len(data) != len(ref):
            self.fail(f"both bottoms need the same number of axes, got {data} and {ref}")
        axis = canonical_axis(p.axis, len(data), self)
        offsets = list(p.offset)
        if len(offsets) > 1 and len(offsets) != len(data) - axis:
            self.fail(f"{len(offsets)} offsets for the {len(data) - axis} axes from axis {axis}; give one, or one "
                      "per axis")
        self.slices, out = [], []
        for i, (size, want) in enumerate(zip(data, ref)):
            if i < axis:
                self.slices.append(slice(None))
                out.append(size)
                continue
            off = offsets[0] if len(offsets) == 1 else offsets[i - axis] if offsets else 0
            if size - off < want:
                self.fail(f"the crop of axis {i} (size {want} at offset {off}) falls outside bottom 0's size {size}")
            self.slices.append(slice(off, off + want))
            out.append(want)
        return [tuple(out)]

    def forward(self, x, ref):
        return [x[tuple(self.slices)]]
