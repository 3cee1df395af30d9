"""Legacy net formats upgraded as Caffe upgrades them (src/caffe/util/upgrade_proto.cpp, UpgradeNetAsNeeded), in its
order: V0 layers (and V0 padding layers) -> V1, V1 data-layer transformation fields -> transform_param, V1 `layers`
-> current `layer`, and BatchNorm's three legacy param specs -> lr_mult/decay_mult 0. The legacy `input:` header is
left to netparam.legacy_inputs (same shapes, without Caffe's extra layer named "input") unless asked for, as in
`upgrade_net_proto_text`.

`upgrade_net` returns the upgraded NetParameter and one note per step taken, for the tools to print.
"""

from caffecam.errors import CaffeCamError, net_label
from caffecam.proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter
V0 = caffe_pb2.V0LayerParameter

# UpgradeV0LayerType.
V0_TYPES = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION, "data": V1.DATA,
    "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS, "flatten": V1.FLATTEN, "hdf5_data": V1.HDF5_DATA,
    "hdf5_output": V1.HDF5_OUTPUT, "im2col": V1.IM2COL, "images": V1.IMAGE_DATA, "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT, "lrn": V1.LRN, "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": V1.POOLING, "relu": V1.RELU, "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX, "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT, "tanh": V1.TANH, "window_data": V1.WINDOW_DATA,
}
# UpgradeV1LayerType (NONE is the empty type).
V1_TYPES = {
    V1.NONE: "", V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax", V1.BNLL: "BNLL",
    V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss", V1.CONVOLUTION: "Convolution",
    V1.DECONVOLUTION: "Deconvolution", V1.DATA: "Data", V1.DROPOUT: "Dropout", V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss", V1.ELTWISE: "Eltwise", V1.EXP: "Exp", V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data", V1.HDF5_OUTPUT: "HDF5Output", V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData", V1.INFOGAIN_LOSS: "InfogainLoss", V1.INNER_PRODUCT: "InnerProduct", V1.LRN: "LRN",
    V1.MEMORY_DATA: "MemoryData", V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", V1.MVN: "MVN",
    V1.POOLING: "Pooling", V1.POWER: "Power", V1.RELU: "ReLU", V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", V1.SILENCE: "Silence", V1.SOFTMAX: "Softmax",
    V1.SOFTMAX_LOSS: "SoftmaxWithLoss", V1.SPLIT: "Split", V1.SLICE: "Slice", V1.TANH: "TanH",
    V1.WINDOW_DATA: "WindowData", V1.THRESHOLD: "Threshold",
}
# The sub-messages UpgradeV1LayerParameter copies across as they are.
V1_SUBMESSAGES = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param", "convolution_param", "data_param",
    "dropout_param", "dummy_data_param", "eltwise_param", "exp_param", "hdf5_data_param", "hdf5_output_param",
    "hinge_loss_param", "image_data_param", "infogain_loss_param", "inner_product_param", "lrn_param",
    "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param", "sigmoid_param", "softmax_param",
    "slice_param", "tanh_param", "threshold_param", "window_data_param", "transform_param", "loss_param",
)
# UpgradeNetDataTransformation: V1 data layers whose own parameter still holds the transformation fields.
DATA_TRANSFORM = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param", V1.WINDOW_DATA: "window_data_param"}
TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# UpgradeV0LayerParameter: V0 field -> {V0 type: (V1 sub-message, its field)}; a field Caffe sets whatever the type
# has "*". `pad`, `kernelsize` and `stride` are repeated in ConvolutionParameter (None marks those).
_CONV, _IP, _POOL = "convolution_param", "inner_product_param", "pooling_param"
_SOURCES = {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
            "window_data": "window_data_param"}
V0_FIELDS = {
    "num_output": {"conv": (_CONV, "num_output"), "innerproduct": (_IP, "num_output")},
    "biasterm": {"conv": (_CONV, "bias_term"), "innerproduct": (_IP, "bias_term")},
    "weight_filler": {"conv": (_CONV, "weight_filler"), "innerproduct": (_IP, "weight_filler")},
    "bias_filler": {"conv": (_CONV, "bias_filler"), "innerproduct": (_IP, "bias_filler")},
    "pad": {"conv": (_CONV, "pad"), "pool": (_POOL, "pad")},
    "kernelsize": {"conv": (_CONV, "kernel_size"), "pool": (_POOL, "kernel_size")},
    "group": {"conv": (_CONV, "group")},
    "stride": {"conv": (_CONV, "stride"), "pool": (_POOL, "stride")},
    "pool": {"pool": (_POOL, "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    **{f: {"lrn": ("lrn_param", f)} for f in ("local_size", "alpha", "beta", "k")},
    "source": {**{t: (m, "source") for t, m in _SOURCES.items()},
               "infogain_loss": ("infogain_loss_param", "source")},
    "scale": {"*": ("transform_param", "scale")},
    "meanfile": {"*": ("transform_param", "mean_file")},
    "batchsize": {t: (m, "batch_size") for t, m in _SOURCES.items()},
    "cropsize": {"*": ("transform_param", "crop_size")},
    "mirror": {"*": ("transform_param", "mirror")},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}


def _set(msg, field, value):
    fd = msg.DESCRIPTOR.fields_by_name[field]
    if fd.is_repeated:
        getattr(msg, field).append(value)
    elif fd.message_type is not None:
        getattr(msg, field).CopyFrom(value)
    else:
        setattr(msg, field, value)


def _where(net_param, i):
    return f"{net_label(net_param.name)}, legacy layer {i}"


def _remove_v0_padding(net_param):
    """UpgradeV0PaddingLayers: a V0 "padding" layer is dropped and its pad moves into the conv/pool reading it."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layers[:]
    last_top = {name: None for name in net_param.input}
    for i, conn in enumerate(net_param.layers):
        if conn.layer.type != "padding":
            out.layers.add().CopyFrom(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise CaffeCamError(f"{_where(net_param, i)} ('{conn.layer.name}'): unknown bottom '{blob}'")
            src = last_top[blob]
            if src is None or net_param.layers[src].layer.type != "padding":
                continue
            pad_layer = net_param.layers[src]
            if conn.layer.type not in ("conv", "pool") or len(conn.bottom) != 1 or len(pad_layer.bottom) != 1 \
                    or len(pad_layer.top) != 1:
                raise CaffeCamError(f"{_where(net_param, i)} ('{conn.layer.name}'): a V0 padding layer may only feed "
                                    "a one-input conv or pool layer (Caffe refuses this net too)")
            out.layers[-1].layer.pad = pad_layer.layer.pad
            out.layers[-1].bottom[j] = pad_layer.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return out


def _v0_to_v1(conn, where, notes):
    """UpgradeV0LayerParameter: one V0 layer as a V1 layer; fields its type cannot take are left out, as Caffe
    leaves them (it logs an error and goes on), and noted."""
    v1 = V1()
    v1.bottom.extend(conn.bottom)
    v1.top.extend(conn.top)
    if not conn.HasField("layer"):
        return v1
    v0 = conn.layer
    if v0.HasField("name"):
        v1.name = v0.name
    if v0.HasField("type"):
        if v0.type not in V0_TYPES:
            raise CaffeCamError(f"{where} ('{v0.name}'): unknown V0 layer type '{v0.type}' (Caffe refuses it too)")
        v1.type = V0_TYPES[v0.type]
    v1.blobs.extend(v0.blobs)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)
    for v0_field, targets in V0_FIELDS.items():
        if not v0.HasField(v0_field):
            continue
        target = targets.get(v0.type) or targets.get("*")
        if target is None:
            notes.append(f"{where} ('{v0.name}'): V0 field {v0_field} does not apply to type '{v0.type}'; "
                         "left out, as Caffe does")
            continue
        sub, field = target
        value = getattr(v0, v0_field)
        if v0_field == "pool":
            value = caffe_pb2.PoolingParameter.PoolMethod.Value(V0.PoolMethod.Name(value))
        if field is None:
            getattr(v1, sub).CopyFrom(value)
        else:
            _set(getattr(v1, sub), field, value)
    return v1


def _v0_net(net_param, notes):
    """UpgradeV0Net: keeps only the name, inputs, input_dim and force_backward of the old net, as Caffe does."""
    padded = _remove_v0_padding(net_param)
    out = caffe_pb2.NetParameter()
    if padded.HasField("name"):
        out.name = padded.name
    for i, conn in enumerate(padded.layers):
        out.layers.add().CopyFrom(_v0_to_v1(conn, _where(net_param, i), notes))
    out.input.extend(padded.input)
    out.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        out.force_backward = padded.force_backward
    return out


def _move_transform_fields(net_param):
    """UpgradeNetDataTransformation; True when a field moved."""
    moved = False
    for layer in net_param.layers:
        sub = DATA_TRANSFORM.get(layer.type)
        if sub is None or not layer.HasField(sub):
            continue
        param = getattr(layer, sub)
        for field in TRANSFORM_FIELDS:
            if param.HasField(field):
                setattr(layer.transform_param, field, getattr(param, field))
                param.ClearField(field)
                moved = True
    return moved


def upgrade_v1_layer(v1, where="legacy layer"):
    """UpgradeV1LayerParameter: a V1LayerParameter as a current LayerParameter."""
    if v1.type not in V1_TYPES:
        raise CaffeCamError(f"{where} ('{v1.name}'): unknown V1 layer type {v1.type} (Caffe refuses it too)")
    lp = caffe_pb2.LayerParameter()
    lp.bottom.extend(v1.bottom)
    lp.top.extend(v1.top)
    if v1.HasField("name"):
        lp.name = v1.name
    lp.include.extend(v1.include)
    lp.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        lp.type = V1_TYPES[v1.type]
    lp.blobs.extend(v1.blobs)

    def spec(i):
        while len(lp.param) <= i:
            lp.param.add()
        return lp.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    lp.loss_weight.extend(v1.loss_weight)
    for field in V1_SUBMESSAGES:
        if v1.HasField(field):
            getattr(lp, field).CopyFrom(getattr(v1, field))
    return lp


def _inputs_as_layer(net_param):
    """UpgradeNetInput: the `input:` header becomes a first layer "input" of type Input (a header without shapes, as
    old .caffemodel files have, is dropped)."""
    if len(net_param.input_shape) or len(net_param.input_dim):
        lp = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net_param.input):
            lp.top.append(name)
            if len(net_param.input_shape):
                lp.input_param.shape.add().CopyFrom(net_param.input_shape[i])
            else:
                lp.input_param.shape.add().dim.extend(net_param.input_dim[4 * i: 4 * i + 4])
        layers = [lp, *net_param.layer]
        del net_param.layer[:]
        net_param.layer.extend(layers)
    for field in ("input", "input_shape", "input_dim"):
        net_param.ClearField(field)


def upgrade_net(net_param, inputs_as_layer=False):
    """(the net in the current format, [notes]) — the input itself, unchanged, when nothing needed upgrading."""
    notes = []
    if not len(net_param.layers) and not any(lp.type == "BatchNorm" and len(lp.param) == 3 for lp in net_param.layer) \
            and not (inputs_as_layer and len(net_param.input)):
        return net_param, notes
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    if any(conn.HasField("layer") for conn in out.layers):
        out = _v0_net(out, notes)
        notes.insert(0, "legacy V0 layers (lowercase types, V0 padding layers) upgraded to V1")
    if _move_transform_fields(out):
        notes.append("data layers' scale/mean_file/crop_size/mirror moved into transform_param")
    if len(out.layers):
        if len(out.layer):
            raise CaffeCamError(f"{net_label(out.name)}: mixes current `layer` and legacy `layers` fields; use one "
                                "(Caffe refuses to upgrade it too)")
        layers = [upgrade_v1_layer(v1, _where(out, i)) for i, v1 in enumerate(out.layers)]
        del out.layers[:]
        out.layer.extend(layers)
        notes.append("legacy V1 `layers` upgraded to `layer`")
    for lp in out.layer:
        # UpgradeNetBatchNorm: the old BatchNorm declared a param spec for each of its three statistics blobs.
        if lp.type == "BatchNorm" and len(lp.param) == 3:
            if any(spec.lr_mult or spec.decay_mult for spec in lp.param):
                notes.append(f"BatchNorm '{lp.name}': its three param specs set to lr_mult 0, decay_mult 0")
            for spec in lp.param:
                spec.lr_mult, spec.decay_mult = 0.0, 0.0
    if inputs_as_layer and len(out.input):
        _inputs_as_layer(out)
        notes.append("legacy `input:` header made an Input layer")
    return out, notes
