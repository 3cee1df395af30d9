"""The base of every layer class (set-up checks shared by the layer types) and the helpers that read their
parameters."""

import torch
from torch import nn

from caffecam.engine.fillers import check_filler, fill
from caffecam.errors import CaffeCamError

# Caffe type name -> layer class; filled by @register in each family module (imported by layers/__init__.py).
LAYER_TYPES = {}


def register(*type_names):
    """Class decorator: the class computes these Caffe layer types (default: the class's own name)."""
    def add(cls):
        for name in type_names or (cls.__name__,):
            if name in LAYER_TYPES:
                raise RuntimeError(f"layer type {name} registered twice")
            LAYER_TYPES[name] = cls
        return cls
    return add


class Layer(nn.Module):
    fixed_blobs = False  # True: Caffe never learns this layer's blobs (BatchNorm forces their lr_mult to 0)

    def rounds_once(self, *bottoms):
        """Whether this layer, one that runs in float32 under autocast, computes these reduced-precision bottoms in
        float32 itself and rounds its tops once, so that Net.forward hands it them as they are (LRN overrides)."""
        return False

    def __init__(self, lp, bottom_shapes, phase, generator=None):
        super().__init__()
        self.name, self.type, self.phase = lp.name, lp.type, phase
        self.blobs = nn.ParameterList()
        self._fillers = []
        self.top_shapes = self.setup(lp, [tuple(s) for s in bottom_shapes], generator)

    def fail(self, what):
        raise CaffeCamError(f"layer '{self.name}' ({self.type}): {what}")

    def add_blob(self, shape, filler, generator):
        """A learnable blob: at set-up a meta tensor (its shape, the filler checked, no memory, the generator not
        drawn from); materialize() fills it, in the same order, once the net knows it fits in memory."""
        where = f"layer '{self.name}'"
        check_filler(tuple(int(d) for d in shape), filler, where)
        self.blobs.append(nn.Parameter(torch.empty(shape, device="meta")))
        self._fillers.append((shape, filler, where))

    def fill_values(self, generator=None):
        """Fresh values for the blobs add_blob declared, drawn from `generator` in Caffe's order."""
        return [fill(shape, filler, generator, where=where) for shape, filler, where in self._fillers]

    def materialize(self, generator=None):
        """Allocate and fill this layer's blobs (a layer built on its own; a Net materialises its layers itself)."""
        for i, value in enumerate(self.fill_values(generator)):
            self.blobs[i] = nn.Parameter(value)

    def need_hw_pairs(self, p, names):
        """Caffe rejects a lone x_h or x_w for these fields (the other would silently be 0)."""
        for name in names:
            if p.HasField(f"{name}_h") != p.HasField(f"{name}_w"):
                self.fail(f"give both {name}_h and {name}_w, or neither")

    def need_positive(self, **fields):
        """Caffe rejects zero kernel, stride, dilation and group sizes (here they would divide by zero)."""
        for name, values in fields.items():
            if min(values) < 1:
                self.fail(f"{name} must be at least 1, got {values}")

    def need_bottoms(self, shapes, n):
        if len(shapes) != n:
            self.fail(f"expects {n} bottom blob(s), got {len(shapes)}")

    def need_image_bottom(self, shapes):
        """One N×C×H×W bottom (Convolution, Pooling, LRN); returns its shape."""
        self.need_bottoms(shapes, 1)
        if len(shapes[0]) != 4:
            self.fail(f"needs an N×C×H×W bottom, got {shapes[0]}")
        return shapes[0]


def canonical_axis(axis, ndim, layer):
    if not -ndim <= axis < ndim:
        layer.fail(f"axis {axis} out of range for a {ndim}-D blob")
    return axis % ndim
