"""Caffe's layer types, one class each, grouped in modules by Caffe's families; this module is the registry.

A layer is built from its LayerParameter and the shapes of its bottoms; it knows its top shapes and owns its
learnable blobs in Caffe's order (weight, then bias) in `self.blobs`. forward(*bottoms) returns a list of tops.
Families: vision (Convolution, Pooling), neuron (ReLU, Dropout), normalization (LRN), common (InnerProduct, Concat,
Eltwise, Softmax, Flatten, Split), loss (SoftmaxWithLoss, Accuracy), input (Input, Data, ImageData).
May import: caffecam.engine.kernels, caffecam.engine.fillers, caffecam.proto, caffecam.errors.
"""

from caffecam.engine.layers.common import Concat, Eltwise, Flatten, InnerProduct, Softmax, Split
from caffecam.engine.layers.input import Input
from caffecam.engine.layers.loss import Accuracy, SoftmaxWithLoss
from caffecam.engine.layers.neuron import Dropout, ReLU
from caffecam.engine.layers.normalization import LRN
from caffecam.engine.layers.vision import Convolution, Pooling
from caffecam.errors import CaffeCamError

# Types whose tops are fed from outside the net (by the data pipeline or the caller).
INPUT_TYPES = {"Input", "Data", "ImageData"}

LAYER_TYPES = {
    cls.__name__: cls
    for cls in (Convolution, Pooling, LRN, ReLU, Concat, InnerProduct, Dropout, Softmax, SoftmaxWithLoss, Accuracy,
                Flatten, Eltwise, Split, Input)
}
for _name in INPUT_TYPES:
    LAYER_TYPES[_name] = Input


def make_layer(lp, bottom_shapes, phase, generator=None):
    cls = LAYER_TYPES.get(lp.type)
    if cls is None:
        raise CaffeCamError(
            f"layer '{lp.name}': unknown type '{lp.type}' (supported: {', '.join(sorted(LAYER_TYPES))})"
        )
    return cls(lp, bottom_shapes, phase, generator)
