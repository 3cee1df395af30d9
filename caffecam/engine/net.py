"""A Caffe NetParameter as a torch.nn.Module: the blob DAG for one phase, forward returning named blobs."""

import math
from collections import OrderedDict

import torch
from torch import nn

from caffecam.engine import memory, netparam
from caffecam.engine.autocast_plan import float32_layers, rounded_tops
from caffecam.engine.kernels import cpu_loops, winograd
from caffecam.engine.layers import INPUT_TYPES, make_layer
from caffecam.engine.prototxt import read_net
from caffecam.errors import CaffeCamError, net_label
from caffecam.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
# An in-place ReLU (top named as its bottom) overwrites its input, as Caffe does, only after these layers: their
# backward does not read their output (Caffe saves the memory; here it also saves a pass over the blob). After any
# other layer, or on a net input the caller owns, it writes a new tensor.
_OVERWRITABLE = {"Convolution", "InnerProduct", "Concat", "BatchNorm", "Scale", "Bias", "Eltwise SUM"}
_REDUCED = (torch.bfloat16, torch.float16)


def _producer_kind(lp):
    """The layer's type, and for Eltwise its operation: a sum's backward does not read its output (ResNet's
    shortcut sums are followed by an in-place ReLU), a product's may."""
    if lp.type == "Eltwise":
        return "Eltwise " + caffe_pb2.EltwiseParameter.EltwiseOp.Name(lp.eltwise_param.operation)
    return lp.type


def _relu_pool_pairs(layer_params, layers):
    """{i: j} where the in-place ReLU i (slope 0) has one reader of its top, the one-top MAX Pooling j. There the
    pooling's backward can do the ReLU's as well (Net.forward): a gradient reaches only each window's maximum, and
    ReLU's backward keeps it where that maximum is above 0. That saves a pass over the largest blobs (GoogLeNet's
    and AlexNet's conv1: reading the gradient and the top, writing the result). In training on the compiled loops,
    float32 or bfloat16."""
    pairs = {}
    for i, (lp, layer) in enumerate(zip(layer_params, layers)):
        if lp.type != "ReLU" or not layer.inplace or layer.slope != 0:
            continue
        readers = []
        for j in range(i + 1, len(layer_params)):
            if lp.top[0] in layer_params[j].bottom:
                readers.append(j)
            if lp.top[0] in layer_params[j].top:
                break
        pool = layer_params[readers[0]] if len(readers) == 1 else None
        if pool is not None and pool.type == "Pooling" and pool.pooling_param.pool == caffe_pb2.PoolingParameter.MAX \
                and len(pool.top) == 1 and len(pool.bottom) == 1:
            pairs[i] = readers[0]
    return pairs


def _hooked(relu, pool):
    """Whether a forward hook could put another tensor between the ReLU and the pooling (cam/gradients.leaf_blob
    swaps in a leaf; a hook may compute from the ReLU's output): the ReLU then records its own backward."""
    from torch.nn.modules import module  # the global hooks have no public accessor
    return bool(relu._forward_pre_hooks or relu._forward_hooks or pool._forward_pre_hooks
                or module._global_forward_hooks or module._global_forward_pre_hooks)


def data_layer_shapes(lp):
    """Top shapes of a Data/ImageData layer from its own parameters, or None when only the data can tell."""
    if lp.type == "HDF5Data":
        return None  # the datasets' shapes are in the files
    if lp.type == "ImageData":
        p = lp.image_data_param
        batch, channels = p.batch_size, 3 if p.is_color else 1
        size = (p.new_height, p.new_width) if p.new_height and p.new_width else None
    elif lp.type == "WindowData":
        batch, channels, size = lp.window_data_param.batch_size, 3, None
    else:
        p = lp.data_param
        batch, channels, size = p.batch_size, 3, None
    crop = lp.transform_param.crop_size
    if crop:
        size = (crop, crop)
    if size is None:
        return None
    shapes = [(batch, channels) + tuple(size)]
    return shapes + [(batch,)] * (len(lp.top) - 1)


class Net(nn.Module):
    """Build with Net(net_param, phase). forward({blob: tensor}) -> {blob name: tensor} for every blob.

    pycaffe-like access: net.params['CAM_fc_14'][0] is the classifier weight; net.blob_shapes gives shapes at set-up.
    The shapes are worked out first; parameters are allocated (and filled) only once the parameters and blobs are
    known to fit in the memory left (engine/memory.py). meta=True stops at the shapes: parameters stay meta
    tensors, which take no memory (net_summary.py). `unfilled`: names of layers whose blobs the caller will copy
    from trained weights, allocated without drawing their fillers (VGG16's 138 M draws take a second); ignored with
    a `seed`, where every filler draws in Caffe's order so that the other layers get Caffe's values.
    """

    def __init__(self, net_param, phase=TEST, input_shapes=None, seed=None, level=0, stages=(), meta=False,
                 unfilled=()):
        super().__init__()
        self.name, self.phase = net_param.name, phase
        state = caffe_pb2.NetState(phase=phase, level=level, stage=list(stages))
        input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
        generator = torch.Generator().manual_seed(seed) if seed is not None else None

        self.layer_params, self.input_blobs, self.blob_shapes = [], [], OrderedDict()
        self.layers = nn.ModuleList()
        self.loss_weights, self.layer_by_name = OrderedDict(), OrderedDict()
        owners = {}  # ParamSpec name -> (layer name, blob) of the first layer that named it
        producer = {}  # blob -> type of the layer that wrote it last, None once another layer has read it
        available = set()  # Caffe's net outputs: each layer removes its bottoms, then adds its tops
        for name, shape in netparam.legacy_inputs(net_param):
            self.input_blobs.append(name)
            self.blob_shapes[name] = input_shapes.get(name, shape)
        for lp in netparam.current_layers(net_param):
            if not netparam.layer_included(lp, state):
                continue
            if lp.type in INPUT_TYPES:
                bottom_shapes = self._input_shapes(lp, input_shapes)
                self.input_blobs.extend(lp.top)
            else:
                missing = [b for b in lp.bottom if b not in self.blob_shapes]
                if missing:
                    raise CaffeCamError(f"layer '{lp.name}' ({lp.type}): bottom blob '{missing[0]}' is not produced "
                                        "by any earlier layer or input")
                bottom_shapes = [self.blob_shapes[b] for b in lp.bottom]
                available.difference_update(lp.bottom)
            if lp.name in self.layer_by_name:
                raise CaffeCamError(f"layer '{lp.name}': another layer of phase {caffe_pb2.Phase.Name(phase)} has "
                                    "this name; weights are matched by name, so rename one of them")
            for i, top in enumerate(lp.top):
                # Caffe: only an in-place layer (top i named as bottom i) may write a blob that already exists.
                if top in self.blob_shapes and not (i < len(lp.bottom) and lp.bottom[i] == top):
                    raise CaffeCamError(f"layer '{lp.name}' ({lp.type}): top blob '{top}' is already produced by "
                                        "an earlier layer or input; rename the top")
            layer = make_layer(lp, bottom_shapes, phase, generator, materialize=False)
            if lp.type == "ReLU" and list(lp.top) == list(lp.bottom) and producer.get(lp.bottom[0]) in _OVERWRITABLE:
                layer.inplace = True
            producer.update(dict.fromkeys(lp.bottom))  # read: a later in-place ReLU must not change what it saw
            producer.update(dict.fromkeys(lp.top, _producer_kind(lp)))
            if len(layer.top_shapes) != len(lp.top):
                raise CaffeCamError(f"layer '{lp.name}' ({lp.type}): has {len(lp.top)} tops, expects "
                                    f"{len(layer.top_shapes)}")
            if len(lp.loss_weight) not in (0, len(lp.top)):
                raise CaffeCamError(f"layer '{lp.name}': {len(lp.loss_weight)} loss_weight values for {len(lp.top)} "
                                    "tops; give one per top blob, or none")
            if len(lp.param) > len(layer.blobs):
                raise CaffeCamError(f"layer '{lp.name}': {len(lp.param)} param specs for {len(layer.blobs)} blobs")
            _share_named_params(lp, layer, owners)
            available.update(lp.top)
            for i, (top, shape) in enumerate(zip(lp.top, layer.top_shapes)):
                self.blob_shapes[top] = shape
                weight = lp.loss_weight[i] if len(lp.loss_weight) else (
                    1.0 if lp.type.endswith("Loss") and i == 0 else 0.0)
                if weight:
                    self.loss_weights[top] = weight
                else:
                    self.loss_weights.pop(top, None)
            self.layer_params.append(lp)
            self.layers.append(layer)
            self.layer_by_name[lp.name] = layer
        if not self.layers:
            raise CaffeCamError(f"{net_label(self.name)}: no layers in phase {caffe_pb2.Phase.Name(phase)}")
        unknown = sorted(set(input_shapes) - set(self.input_blobs))
        if unknown:
            raise CaffeCamError(f"{net_label(self.name)}: input_shapes names '{unknown[0]}', which is not an input "
                                f"of this net in phase {caffe_pb2.Phase.Name(phase)} (inputs: "
                                f"{', '.join(self.input_blobs)})")
        # Caffe's net outputs: blobs no later layer consumes (an in-place layer's top counts), sorted by name.
        self.output_blobs = sorted(available - set(self.input_blobs))
        self.param_specs()  # a shared parameter given two different lr_mult/decay_mult values is an error now
        self._float32 = float32_layers(self.layer_params)
        self._rounded_tops = rounded_tops(self.layer_params, self._float32)
        self._relu_into_pool = _relu_pool_pairs(self.layer_params, self.layers)
        self._pools_after_relu = set(self._relu_into_pool.values())
        self.fold = None  # engine/fold.py's FoldPlan once fold_batchnorm(net) was called: inference only
        if not meta:
            memory.check_fits(self)
            self._materialize(generator, set(unfilled) if seed is None else set())

    def _materialize(self, generator, unfilled=frozenset()):
        """Allocate and fill every layer's blobs in net order, each layer drawing from `generator` as Caffe's
        fillers do (a layer sharing a blob by ParamSpec name draws too, then keeps its owner's blob); the layers
        named in `unfilled` are only allocated."""
        filled = {}  # id of a meta parameter -> its filled parameter, so that shared blobs stay one tensor
        for layer in self.layers:
            if layer.name in unfilled:
                values = [torch.empty(tuple(blob.shape)) for blob in layer.blobs]
            else:
                values = layer.fill_values(generator)
            for i, value in enumerate(values):
                blob = layer.blobs[i]
                if id(blob) not in filled:
                    filled[id(blob)] = nn.Parameter(value)
                layer.blobs[i] = filled[id(blob)]

    def _input_shapes(self, lp, given):
        if lp.type == "Input":
            p = lp.input_param
            shapes = [tuple(s.dim) for s in p.shape]
            if len(shapes) == 1:
                shapes = shapes * len(lp.top)
            if len(shapes) != len(lp.top):
                raise CaffeCamError(f"layer '{lp.name}' (Input): {len(lp.top)} tops but {len(p.shape)} shapes")
        else:
            shapes = data_layer_shapes(lp)
        if lp.type != "Input" and lp.top and lp.top[0] in given:
            # Data/ImageData given the data shape alone: a label top follows its batch size.
            data = given[lp.top[0]]
            shapes = [data] + [given.get(t, (data[0],)) for t in lp.top[1:]]
        elif any(t in given for t in lp.top):
            shapes = [given.get(t, s) for t, s in zip(lp.top, shapes or [None] * len(lp.top))]
            shapes = None if None in shapes else shapes
        if shapes is None:
            how = "" if lp.type == "HDF5Data" else "set transform_param.crop_size or new_height/new_width, or "
            raise CaffeCamError(f"layer '{lp.name}' ({lp.type}): input size unknown; {how}pass input_shapes "
                                "(caffecam.data.feeds.make_feeds gives them)")
        return shapes

    @property
    def params(self):
        """OrderedDict layer name -> list of its learnable blobs (weight, bias), for layers that have any."""
        return OrderedDict((name, list(layer.blobs)) for name, layer in self.layer_by_name.items() if len(layer.blobs))

    def param_specs(self):
        """[(layer name, blob index, parameter, lr_mult, decay_mult)] in net order, each parameter once.

        As Caffe's Net::AppendParam: a parameter shared by ParamSpec name is listed at its first layer; its
        lr_mult/decay_mult is the first one given explicitly (owner first), else 1; two different explicit values
        are an error. Layers with `fixed_blobs` (BatchNorm) get lr_mult 0 where no ParamSpec is given.
        """
        out, seen, explicit = [], {}, []  # explicit[k]: {field: layer name} given for out[k]
        for lp, layer in zip(self.layer_params, self.layers):
            for i, blob in enumerate(layer.blobs):
                if i < len(lp.param):
                    spec = lp.param[i]
                else:  # Caffe's BatchNorm adds ParamSpecs with lr_mult 0 for its statistics
                    spec = caffe_pb2.ParamSpec(lr_mult=0) if layer.fixed_blobs else caffe_pb2.ParamSpec()
                given = {f: getattr(spec, f) for f in ("lr_mult", "decay_mult") if spec.HasField(f)}
                if id(blob) not in seen:
                    seen[id(blob)] = len(out)
                    out.append([lp.name, i, blob, spec.lr_mult, spec.decay_mult])
                    explicit.append({f: lp.name for f in given})
                    continue
                k = seen[id(blob)]
                for col, field in ((3, "lr_mult"), (4, "decay_mult")):
                    if field not in given:
                        continue
                    value = given[field]
                    if field in explicit[k] and out[k][col] != value:
                        raise CaffeCamError(f"layer '{lp.name}': shared param '{spec.name}' has {field} {value:g}, "
                                            f"but {out[k][col]:g} in layer '{explicit[k][field]}'")
                    out[k][col] = value
                    explicit[k].setdefault(field, lp.name)
        return [tuple(entry) for entry in out]

    def forward(self, inputs, end=None):
        """Run the net. `inputs`: {input blob: tensor} (a bare tensor when the net has one input).

        Returns {blob: tensor} holding every blob's latest value (an in-place layer overwrites its blob, as in
        Caffe). With `end`, stops after the layer of that name. With a FoldPlan (engine/fold.py) and no gradient
        recorded, folded BatchNorm/Scale layers run inside their Convolution; the blobs they skip are not returned.
        """
        if torch.is_tensor(inputs):
            feeds = [b for b in self.input_blobs if b != "label"]
            if len(feeds) != 1:
                raise CaffeCamError(f"{net_label(self.name)} has inputs {self.input_blobs}; pass a dict")
            inputs = {feeds[0]: inputs}
        if end is not None and end not in self.layer_by_name:
            raise CaffeCamError(f"{net_label(self.name)}: no layer named '{end}' to stop at")
        missing = [b for b in self.input_blobs if b not in inputs]
        if missing:
            raise CaffeCamError(f"{net_label(self.name)}: input blob '{missing[0]}' was not given")
        blobs = dict(inputs)
        fold = self.fold if self.fold is not None and self.fold.applies(end) else None
        last = len(self.layers) if end is None else next(
            i for i, lp in enumerate(self.layer_params) if lp.name == end)
        folded = {}  # pooling index -> the tensor its ReLU wrote without recording a backward (_relu_pool_pairs)
        for i, (lp, layer) in enumerate(zip(self.layer_params, self.layers)):
            if fold is not None and (i in fold.groups or i in fold.skipped):
                if i in fold.groups:  # the Convolution of a folded group writes the group's output (engine/fold.py)
                    top, value = fold.forward(self, i, blobs)
                    blobs[top] = value
                if end is not None and lp.name == end:
                    break
                continue
            if lp.type in INPUT_TYPES:
                missing = [t for t in lp.top if t not in blobs]
                if missing:
                    raise CaffeCamError(f"input blob '{missing[0]}' of layer '{lp.name}' was not given")
                continue
            bottoms = [blobs[b] for b in lp.bottom]
            if i in self._relu_into_pool:
                j = self._relu_into_pool[i]
                layer.untracked = j <= last and not _hooked(layer, self.layers[j]) and \
                    self.layers[j].trains_after_relu(bottoms[0])
                if layer.untracked:
                    folded[j] = bottoms[0]  # in place: the ReLU's own output
            elif i in self._pools_after_relu:
                layer.after_relu = i in folded and bottoms[0] is folded.pop(i)
            where = bottoms[0].device.type if bottoms else None
            if i in self._float32 and where and torch.is_autocast_enabled(where) and not (
                    i in self._rounded_tops and layer.rounds_once(*bottoms)):
                with torch.autocast(where, enabled=False):
                    tops = layer(*[b.float() if b.dtype in _REDUCED else b for b in bottoms])
            else:
                tops = layer(*bottoms)
            blobs.update(zip(lp.top, tops))
            if end is not None and lp.name == end:
                break
        return blobs

    def set_input_arrays(self, data, labels):
        """pycaffe's Net.set_input_arrays: hand N×C×H×W float32 data and N labels to the net's first layer, which
        must be MemoryData (N a multiple of its batch_size; each forward takes the next batch)."""
        if not self.layers or self.layer_params[0].type != "MemoryData":
            raise CaffeCamError(f"{net_label(self.name)}: set_input_arrays needs a MemoryData layer as the first layer")
        self.layers[0].set_input_arrays(data, labels)

    def winograd_layers(self):
        """Names of the Convolution layers that run as Winograd (F(2×2) or F(4×4), 3×3) on the CPU at the set-up
        shapes."""
        if not winograd.ENABLED:
            return []
        names = []
        for lp, layer in zip(self.layer_params, self.layers):
            if lp.type == "Convolution" and layer.winograd_allowed:
                shape = tuple(self.blob_shapes[lp.bottom[0]])
                # numba loads only where a blob is large enough for F(4×4)
                loops = math.prod(shape) >= winograd.MIN_ELEMENTS_4 and cpu_loops.winograd_ready(torch.empty(0))
                if winograd.suits_shapes(shape, layer.blobs[0].shape, layer.stride, layer.pad, layer.dilation,
                                         layer.group, winograd.tile_for_shape(shape, loops)):
                    names.append(lp.name)
        return names

    def loss(self, blobs):
        """Caffe's objective: Σ loss_weight · sum(top) over the loss tops."""
        return sum(w * blobs[name].sum() for name, w in self.loss_weights.items())

    def consumers(self, blob):
        """Layers (LayerParameters) that read `blob`, in net order."""
        return [lp for lp in self.layer_params if blob in lp.bottom]

    def producer(self, blob):
        """The last layer writing `blob` (for in-place chains, the last in-place layer)."""
        found = None
        for lp in self.layer_params:
            if blob in lp.top:
                found = lp
        return found


def _share_named_params(lp, layer, owners):
    """Caffe's parameter sharing: a blob whose ParamSpec has a name already given by an earlier layer is that
    layer's blob (one tensor: gradients add up, updates apply once). STRICT sharing needs equal shapes;
    PERMISSIVE only equal counts in Caffe, which here works only when the shapes are equal too."""
    for i, spec in enumerate(lp.param):
        if not spec.name:
            continue
        if spec.name not in owners:
            owners[spec.name] = (lp.name, layer.blobs[i])
            continue
        owner_name, blob = owners[spec.name]
        mine = tuple(layer.blobs[i].shape)
        if tuple(blob.shape) != mine:
            if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE and blob.numel() == layer.blobs[i].numel():
                raise CaffeCamError(f"layer '{lp.name}': param '{spec.name}' is {mine} here, {tuple(blob.shape)} in "
                                    f"layer '{owner_name}': PERMISSIVE sharing across shapes is not supported")
            raise CaffeCamError(f"layer '{lp.name}': cannot share param '{spec.name}' of layer '{owner_name}': "
                                f"shape {mine} here, {tuple(blob.shape)} there")
        layer.blobs[i] = blob


def load_net(path, phase=TEST, **kwargs):
    return Net(read_net(path), phase, **kwargs)
