"""GoogLeNet-CAM nets and solvers built as caffe_pb2 messages; scripts/make_prototxt.py writes them to prototxt/
(nets/prototxt_files.py lists the files).

Layer names and hyper-parameters follow BVLC GoogLeNet up to `inception_4e/output`, so ImageNet weights copy by
name. The auxiliary loss1/loss2 branches and pool4/3x3_s2 are left out: CAM keeps the 14x14 map of inception_4e.

Classifier naming: the full-width net names its classifier `CAM_fc_<K>` (`CAM_fc_14` for the paper's 14 classes), so
a fine-tune to another class count starts that layer fresh instead of failing on its shape. Narrow variants
(width_div > 1) and the tiny test net use plain `CAM_fc`; they never load published weights.
"""

from caffecam.errors import CaffeCamError
from caffecam.nets.builders import (
    concat,
    constant,
    conv_relu,
    image_data_layers,
    input_layer,
    lmdb_data_layers,
    lrn,
    pool,
    solver,
    xavier,
)
from caffecam.nets.cam_surgery import Head, cam_head
from caffecam.proto import caffe_pb2

# Per inception block: 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj.
INCEPTION_WIDTHS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
}
# Branch name, kernel, pad, xavier std (the std is BVLC's; Caffe's xavier ignores it, kept so the files match).
_BRANCHES = (
    ("1x1", 1, 0, 0.03),
    ("3x3_reduce", 1, 0, 0.09),
    ("3x3", 3, 1, 0.03),
    ("5x5_reduce", 1, 0, 0.2),
    ("5x5", 5, 2, 0.03),
    ("pool_proj", 1, 0, 0.1),
)
CAM_CONV_WIDTH = 1024
MIN_INPUT_SIZE = 32


def inception(prefix, bottom, widths):
    """One GoogLeNet inception block; its output blob is `<prefix>/output` with sum of (1x1, 3x3, 5x5, pool_proj)."""
    w = dict(zip([b[0] for b in _BRANCHES], widths))
    spec = {b[0]: b for b in _BRANCHES}
    layers = []

    def branch(kind, src):
        _, kernel, pad, std = spec[kind]
        return conv_relu(f"{prefix}/{kind}", f"{prefix}/relu_{kind}", src, w[kind], kernel, pad=pad,
                         weight_filler=xavier(std), bias_filler=constant(0.2))

    layers += branch("1x1", bottom)
    layers += branch("3x3_reduce", bottom)
    layers += branch("3x3", f"{prefix}/3x3_reduce")
    layers += branch("5x5_reduce", bottom)
    layers += branch("5x5", f"{prefix}/5x5_reduce")
    layers.append(pool(f"{prefix}/pool", bottom, "MAX", kernel=3, stride=1, pad=1))
    layers += branch("pool_proj", f"{prefix}/pool")
    layers.append(concat(f"{prefix}/output", [f"{prefix}/{k}" for k in ("1x1", "3x3", "5x5", "pool_proj")]))
    return layers


# ---- nets ---------------------------------------------------------------------------------------------------------

def narrow(width, width_div):
    """A width divided by width_div, rounded half-up to an even number (CAM_conv's group 2 needs even), at least 2."""
    if width_div == 1:
        return width
    return max(2, 2 * int(width / (2 * width_div) + 0.5))


def _check_args(num_classes, width_div, input_size):
    if not isinstance(num_classes, int) or num_classes < 2:
        raise CaffeCamError(f"num_classes={num_classes!r}: a classifier needs an integer of at least 2 classes")
    if not isinstance(width_div, int) or width_div < 1:
        raise CaffeCamError(f"width_div={width_div!r}: use a positive integer (1 = BVLC widths, 8 = the demo)")
    if not isinstance(input_size, int) or input_size < MIN_INPUT_SIZE:
        raise CaffeCamError(f"input_size={input_size!r}: use an integer of at least {MIN_INPUT_SIZE} pixels")


def _cam_head(bottom, cam_width, num_classes, fc_name, global_pool, head):
    return cam_head(bottom, Head(num_classes, None if global_pool else (14, 14), cam_width, fc_name=fc_name), head)


def _data_or_input(data, head, input_size, batch):
    if data is not None:
        return list(data)
    return [input_layer(batch, input_size, with_label=head == "loss")]


def googlenet_cam(num_classes=14, width_div=1, input_size=224, data=None, head="prob", fc_name=None,
                  name="GoogleNet-CAM", batch=1, last_block="4e"):
    """GoogLeNet through inception_4e, then the CAM head; `data` = data layers, or None for an Input layer.

    head "prob" ends in Softmax `prob`; head "loss" ends in loss3/loss3 and the TEST-only top-1/top-5 accuracies
    (top-5 only with at least 5 classes). With data=None the Input layer is (batch, 3, S, S), plus `label` (batch,)
    for head "loss".
    CAM_pool is the paper's AVE 14/14 at full width and 224 input, global average pooling otherwise.
    `last_block` ends the trunk earlier (e.g. "3b": stride 8, no pool3) for small inputs trained from scratch, where
    the features after inception_4e see the whole image from every position and the maps stop localizing.
    """
    if last_block not in INCEPTION_WIDTHS:
        raise CaffeCamError(f"last_block must be one of {', '.join(INCEPTION_WIDTHS)}, got '{last_block}'")
    _check_args(num_classes, width_div, input_size)
    if fc_name is None:
        fc_name = f"CAM_fc_{num_classes}" if width_div == 1 else "CAM_fc"

    def n(width):
        return narrow(width, width_div)

    net = caffe_pb2.NetParameter(name=name)
    layers = _data_or_input(data, head, input_size, batch)
    layers += conv_relu("conv1/7x7_s2", "conv1/relu_7x7", "data", n(64), 7, stride=2, pad=3,
                        weight_filler=xavier(0.1), bias_filler=constant(0.2))
    layers.append(pool("pool1/3x3_s2", "conv1/7x7_s2", "MAX", kernel=3, stride=2))
    layers.append(lrn("pool1/norm1", "pool1/3x3_s2"))
    layers += conv_relu("conv2/3x3_reduce", "conv2/relu_3x3_reduce", "pool1/norm1", n(64), 1,
                        weight_filler=xavier(0.1), bias_filler=constant(0.2))
    layers += conv_relu("conv2/3x3", "conv2/relu_3x3", "conv2/3x3_reduce", n(192), 3, pad=1,
                        weight_filler=xavier(0.03), bias_filler=constant(0.2))
    layers.append(lrn("conv2/norm2", "conv2/3x3"))
    layers.append(pool("pool2/3x3_s2", "conv2/norm2", "MAX", kernel=3, stride=2))
    bottom = "pool2/3x3_s2"
    for block, widths in INCEPTION_WIDTHS.items():
        layers += inception(f"inception_{block}", bottom, [n(w) for w in widths])
        bottom = f"inception_{block}/output"
        if block == last_block:
            break
        if block == "3b":
            layers.append(pool("pool3/3x3_s2", bottom, "MAX", kernel=3, stride=2))
            bottom = "pool3/3x3_s2"
    global_pool = not (width_div == 1 and input_size == 224 and last_block == "4e")
    layers += _cam_head(bottom, n(CAM_CONV_WIDTH), num_classes, fc_name, global_pool, head)
    net.layer.extend(layers)
    return net


def tiny_cam_net(num_classes=3, input_size=32, data=None, head="prob", batch=2, name="TinyCAM"):
    """A few-layer net with the CAM net's layer types (conv, ReLU, MAX pool, LRN, one inception, grouped CAM_conv,
    global AVE pool, CAM_fc) for fast tests. The CAM map is input/4 (8x8 at 32)."""
    _check_args(num_classes, 1, input_size)
    layers = _data_or_input(data, head, input_size, batch)
    layers += conv_relu("conv1", "conv1/relu", "data", 8, 5, stride=2, pad=2,
                        weight_filler=xavier(), bias_filler=constant(0.2))
    layers.append(pool("pool1", "conv1", "MAX", kernel=3, stride=2))
    layers.append(lrn("norm1", "pool1"))
    layers += inception("inception", "norm1", (4, 4, 8, 2, 4, 4))
    layers += _cam_head("inception/output", 16, num_classes, "CAM_fc", True, head)
    net = caffe_pb2.NetParameter(name=name)
    net.layer.extend(layers)
    return net


# ---- the committed files ------------------------------------------------------------------------------------------

def full_train_val(lmdb=False):
    if lmdb:
        data = lmdb_data_layers("data/train_lmdb", "data/val_lmdb", 224, 32, 32)
    else:
        data = image_data_layers("data/train.txt", "data/val.txt", "data/mpii/images/", 256, 224, 32, 32)
    return googlenet_cam(data=data, head="loss")


def full_deploy():
    return googlenet_cam(head="prob")


def full_solver(net_dir="prototxt"):
    return solver(f"{net_dir}/googlenet_cam_train_val.prototxt", test_iter=20, test_interval=500, base_lr=0.0005,
                  stepsize=2000, max_iter=3000, snapshot=1000, snapshot_prefix="snapshots/googlenet_cam",
                  solver_mode="GPU")
