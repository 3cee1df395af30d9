"""Neuron layers (element-wise, one bottom, one top of its shape): ReLU, Dropout."""

import torch.nn.functional as F

from caffecam.engine.layers.base import Layer, register
from caffecam.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


@register()
class ReLU(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 1)
        self.slope = lp.relu_param.negative_slope
        self.inplace = False  # set by Net where Caffe's in-place form is safe for autograd (see Net.__init__)
        return [shapes[0]]

    def forward(self, x):
        if self.slope == 0:
            return [F.relu_(x) if self.inplace else F.relu(x)]
        return [F.leaky_relu(x, self.slope)]


@register()
class Dropout(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 1)
        self.ratio = lp.dropout_param.dropout_ratio
        if not 0 <= self.ratio < 1:
            self.fail(f"dropout_ratio must be in [0, 1), got {self.ratio:g}")
        return [shapes[0]]

    def forward(self, x):
        # TRAIN: kept units scaled by 1/(1 − p); TEST: identity.
        return [F.dropout(x, self.ratio, training=True) if self.phase == TRAIN and self.ratio > 0 else x]
