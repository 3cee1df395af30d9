"""Caffe's layer types, one class each, in modules named after Caffe's families; this module is the registry.

A layer is built from its LayerParameter and the shapes of its bottoms; it knows its top shapes and owns its
learnable blobs in Caffe's order (weight, then bias) in `self.blobs`. forward(*bottoms) returns a list of tops.
A family module registers its classes with @register (base.py); importing it here is what makes them known.
May import: caffecam.engine.kernels, caffecam.engine.fillers, caffecam.engine.prototxt and weights (blob files),
caffecam.proto, caffecam.errors.
"""

from caffecam.engine.layers import (  # noqa: F401 (importing a family registers its types)
    common,
    input,
    loss,
    loss_distance,
    neuron,
    normalization,
    recurrent,
    routing,
    vision,
)
from caffecam.engine.layers.base import LAYER_TYPES
from caffecam.errors import CaffeCamError

# Types whose tops are fed from outside the net (by the data pipeline or the caller).
INPUT_TYPES = {"Input", "Data", "ImageData"}


def make_layer(lp, bottom_shapes, phase, generator=None):
    cls = LAYER_TYPES.get(lp.type)
    if cls is None:
        raise CaffeCamError(
            f"layer '{lp.name}': unknown type '{lp.type}' (supported: {', '.join(sorted(LAYER_TYPES))})"
        )
    return cls(lp, bottom_shapes, phase, generator)
