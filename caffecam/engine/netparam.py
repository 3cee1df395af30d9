"""NetParameter plumbing: legacy V1 upgrade, phase/level/stage filtering, legacy input headers."""

from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter
V1_TYPE_NAMES = {
    V1.ACCURACY: "Accuracy", V1.CONCAT: "Concat", V1.CONVOLUTION: "Convolution", V1.DATA: "Data",
    V1.DROPOUT: "Dropout", V1.ELTWISE: "Eltwise", V1.FLATTEN: "Flatten", V1.IMAGE_DATA: "ImageData",
    V1.INNER_PRODUCT: "InnerProduct", V1.LRN: "LRN", V1.POOLING: "Pooling", V1.RELU: "ReLU",
    V1.SOFTMAX: "Softmax", V1.SOFTMAX_LOSS: "SoftmaxWithLoss", V1.SPLIT: "Split", V1.ABSVAL: "AbsVal",
    V1.ARGMAX: "ArgMax", V1.BNLL: "BNLL", V1.CONTRASTIVE_LOSS: "ContrastiveLoss", V1.DECONVOLUTION: "Deconvolution",
    V1.DUMMY_DATA: "DummyData", V1.EUCLIDEAN_LOSS: "EuclideanLoss", V1.EXP: "Exp", V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output", V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col", V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.MEMORY_DATA: "MemoryData", V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", V1.MVN: "MVN",
    V1.POWER: "Power", V1.SIGMOID: "Sigmoid", V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    V1.SILENCE: "Silence", V1.SLICE: "Slice", V1.TANH: "TanH", V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}
_SHARED_SUBMESSAGES = (
    "accuracy_param", "concat_param", "convolution_param", "data_param", "dropout_param", "eltwise_param",
    "image_data_param", "inner_product_param", "lrn_param", "pooling_param", "relu_param", "softmax_param",
    "transform_param", "loss_param",
)


def upgrade_v1_layer(v1):
    """A legacy V1LayerParameter as a current LayerParameter (blobs_lr -> lr_mult, weight_decay -> decay_mult)."""
    lp = caffe_pb2.LayerParameter(name=v1.name, type=V1_TYPE_NAMES.get(v1.type, f"V1_{v1.type}"))
    lp.bottom.extend(v1.bottom)
    lp.top.extend(v1.top)
    lp.include.extend(v1.include)
    lp.exclude.extend(v1.exclude)
    lp.loss_weight.extend(v1.loss_weight)
    lp.blobs.extend(v1.blobs)
    for i in range(max(len(v1.blobs_lr), len(v1.weight_decay), len(v1.param))):
        spec = lp.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    for field in _SHARED_SUBMESSAGES:
        if v1.HasField(field):
            getattr(lp, field).CopyFrom(getattr(v1, field))
    return lp


def current_layers(net_param):
    """The net's layers as current LayerParameters, upgrading a legacy `layers` list when that is what it has."""
    if len(net_param.layer) and len(net_param.layers):
        raise CaffeCamError(f"net '{net_param.name}': mixes current `layer` and legacy `layers` fields; use one")
    if len(net_param.layers):
        return [upgrade_v1_layer(v1) for v1 in net_param.layers]
    return list(net_param.layer)


def _rule_met(rule, state):
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def layer_included(lp, state):
    """Caffe's rule: with include rules, any one met includes the layer; otherwise any exclude rule met drops it."""
    if len(lp.include) and len(lp.exclude):
        raise CaffeCamError(f"layer '{lp.name}': has both include and exclude rules; use one")
    if len(lp.include):
        return any(_rule_met(r, state) for r in lp.include)
    return not any(_rule_met(r, state) for r in lp.exclude)


def legacy_inputs(net_param):
    """(name, shape) for the `input:` header, with shapes from `input_shape` or 4 `input_dim` values each."""
    names = list(net_param.input)
    if not names:
        return []
    if len(net_param.input_shape):
        shapes = [tuple(s.dim) for s in net_param.input_shape]
        if len(shapes) == 1:
            shapes = shapes * len(names)
    elif len(net_param.input_dim):
        dims = list(net_param.input_dim)
        if len(dims) != 4 * len(names):
            raise CaffeCamError(f"net '{net_param.name}': {len(names)} inputs need {4 * len(names)} input_dim values, "
                                f"got {len(dims)}")
        shapes = [tuple(dims[4 * i: 4 * i + 4]) for i in range(len(names))]
    else:
        raise CaffeCamError(f"net '{net_param.name}': input {names} has no input_shape or input_dim")
    if len(shapes) != len(names):
        raise CaffeCamError(f"net '{net_param.name}': {len(names)} inputs but {len(shapes)} input shapes")
    return list(zip(names, shapes))
