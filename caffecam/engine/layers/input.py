"""The data family: Input and the data layers fed from outside (Data, ImageData, HDF5Data, WindowData), the ones
that make their tops inside the net (DummyData, MemoryData), the HDF5Output sink, and Python (refused)."""

import os

import numpy as np
import torch

from caffecam.engine.fillers import fill
from caffecam.engine.layers.base import Layer, register
from caffecam.errors import CaffeCamError


@register("Input", "Data", "ImageData", "HDF5Data", "WindowData")
class Input(Layer):
    """Their tops are handed in by the caller (caffecam.data's feeds for the data layers); shapes come from the net
    builder."""

    def setup(self, lp, shapes, gen):
        return list(shapes)

    def forward(self, *xs):
        return list(xs)


class _MakesTops(Layer):
    """A layer without bottoms whose tops it makes itself: they land on the device and dtype the net was moved to."""

    def _anchor(self):
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def _out(self, t):
        return t.to(self.anchor.device, self.anchor.dtype)


@register()
class DummyData(_MakesTops):
    """Tops filled by data_filler (0, 1 or one per top; none = constant 0). Shapes from `shape` or the legacy
    num/channels/height/width (each given once or once per top).

    Caffe's DummyDataLayer refills a top on every forward unless its filler is "constant" (dummy_data_layer.cpp):
    random tops are new draws each pass, from the net's filler generator.
    """

    def setup(self, lp, shapes, gen):
        p, n = lp.dummy_data_param, len(lp.top)
        self._anchor()
        if shapes:
            self.fail("takes no bottom blobs")
        if len(p.data_filler) not in (0, 1, n):
            self.fail(f"{len(p.data_filler)} data_filler entries for {n} tops; give 0, 1 or one per top")
        legacy = {f: list(getattr(p, f)) for f in ("num", "channels", "height", "width")}
        if any(legacy.values()):
            if len(p.shape):
                self.fail("give either shape or num/channels/height/width, not both")
            for field, values in legacy.items():
                if len(values) not in (1, n):
                    self.fail(f"give '{field}' once or once per top ({n}); got {len(values)}")
            tops = [tuple(v[0 if len(v) == 1 else i] for v in legacy.values()) for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                self.fail(f"give 'shape' once or once per top ({n}); got {len(p.shape)}")
            tops = [tuple(p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(n)]
        self.fillers = [p.data_filler[0 if len(p.data_filler) == 1 else i] if len(p.data_filler) else None
                        for i in range(n)]
        self.shapes, self.generator = tops, gen
        where = f"layer '{self.name}'"
        for shape, filler in zip(tops, self.fillers):
            fill((1,), filler, None, where)  # an unknown filler type fails at set-up, as in Caffe
            if min(shape, default=1) < 0:
                self.fail(f"negative dimension in top shape {shape}")
        return tops

    def forward(self):
        where = f"layer '{self.name}'"
        return [self._out(fill(s, f, self.generator, where)) for s, f in zip(self.shapes, self.fillers)]


@register()
class MemoryData(_MakesTops):
    """Tops data (batch_size × channels × height × width) and label, from arrays the caller hands in with
    set_input_arrays(data, labels), as pycaffe's Net.set_input_arrays.

    As Caffe's MemoryDataLayer (memory_data_layer.cpp): each forward takes the next batch_size rows and wraps around;
    the arrays are used as given (no transform_param); the label top is (batch,) at set-up but (batch, 1, 1, 1) after
    a forward pass.
    """

    def setup(self, lp, shapes, gen):
        p = lp.memory_data_param
        self._anchor()
        if shapes:
            self.fail("takes no bottom blobs")
        if len(lp.top) != 2:
            self.fail(f"has {len(lp.top)} tops; it needs exactly 2 (data, label)")
        if p.batch_size * p.channels * p.height * p.width == 0:
            self.fail("batch_size, channels, height and width must all be given and positive in memory_data_param")
        self.batch_size, self.item_shape = p.batch_size, (p.channels, p.height, p.width)
        self.data = self.labels = None
        self.pos = 0
        return [(p.batch_size,) + self.item_shape, (p.batch_size,)]

    def set_input_arrays(self, data, labels):
        """data: N×C×H×W float32 (C, H, W as in memory_data_param); labels: N or N×1×1×1; N a multiple of
        batch_size."""
        data, labels = np.asarray(data), np.asarray(labels)
        if labels.ndim == 1:
            labels = labels.reshape(-1, 1, 1, 1)
        if data.dtype != np.float32 or labels.dtype != np.float32:
            raise CaffeCamError(f"layer '{self.name}' (MemoryData): data and labels must be float32 arrays, got "
                                f"{data.dtype} and {labels.dtype}")
        if data.ndim != 4 or data.shape[1:] != self.item_shape:
            raise CaffeCamError(f"layer '{self.name}' (MemoryData): data array is {data.shape}; it must be N×"
                                f"{'×'.join(map(str, self.item_shape))} (memory_data_param)")
        if labels.ndim != 4 or labels.shape[1:] != (1, 1, 1):
            raise CaffeCamError(f"layer '{self.name}' (MemoryData): labels array is {labels.shape}; give N or N×1×1×1")
        if len(data) != len(labels) or len(data) == 0 or len(data) % self.batch_size:
            raise CaffeCamError(f"layer '{self.name}' (MemoryData): {len(data)} data rows and {len(labels)} labels; "
                                f"both must be the same positive multiple of batch_size {self.batch_size}")
        self.data, self.labels, self.pos = torch.from_numpy(data), torch.from_numpy(labels), 0

    def forward(self):
        if self.data is None:
            raise CaffeCamError(f"layer '{self.name}' (MemoryData): no data; call set_input_arrays(data, labels) "
                                "before the forward pass")
        rows = slice(self.pos, self.pos + self.batch_size)
        self.pos = (self.pos + self.batch_size) % len(self.data)
        return [self._out(self.data[rows]), self._out(self.labels[rows])]


@register("HDF5Output")
class HDF5Output(Layer):
    """Writes its two bottoms to hdf5_output_param.file_name as float32 datasets 'data' and 'label'.

    As Caffe's HDF5OutputLayer (hdf5_output_layer.cpp): the file is created (truncated) at set-up; the datasets take
    the legacy 4-D shape num×channels×height×width (missing axes are 1; more than 4 axes is an error); both bottoms
    need the same num. Caffe can write only once (its second forward fails on the existing datasets); here each forward
    replaces them, so the file holds the latest batch.
    """

    def setup(self, lp, shapes, gen):
        import h5py

        self.file_name = lp.hdf5_output_param.file_name
        if len(shapes) != 2:
            self.fail(f"expects 2 bottom blobs (data, label), got {len(shapes)}")
        if lp.top:
            self.fail("has no top blobs")
        if any(len(s) > 4 for s in shapes):
            self.fail(f"bottoms have more than 4 axes {shapes}; Caffe writes num×channels×height×width")
        if shapes[0][:1] != shapes[1][:1]:
            self.fail(f"bottoms have different num: {shapes[0]} and {shapes[1]}")
        if not self.file_name:
            self.fail("hdf5_output_param.file_name is empty")
        try:
            h5py.File(self.file_name, "w").close()
        except OSError as exc:
            self.fail(f"cannot create {self.file_name} ({exc}); check the folder exists and is writable")
        return []

    def forward(self, data, label):
        import h5py

        arrays = {}
        for key, x in (("data", data), ("label", label)):
            a = x.detach().float().cpu().numpy()
            arrays[key] = a.reshape(a.shape + (1,) * (4 - a.ndim)) if a.ndim else a.reshape(1, 1, 1, 1)
        tmp = f"{self.file_name}.tmp{os.getpid()}"
        with h5py.File(tmp, "w") as f:
            for key, a in arrays.items():
                f.create_dataset(key, data=a)
        os.replace(tmp, self.file_name)
        return []


@register()
class Python(Layer):
    def setup(self, lp, shapes, gen):
        p = lp.python_param
        self.fail(f"Python layers run user code (module '{p.module}', class '{p.layer}') through Caffe's own Python "
                  "module, which this toolkit does not embed: not supported; rewrite it with built-in layer types")
