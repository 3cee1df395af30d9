"""The seed's CAM surgery on any backbone, as NetParameter messages: keep the layers a blob depends on, then add
CAM_conv (3×3, pad 1), CAM_relu, CAM_pool (AVE over the whole map), CAM_fc_<N> and the loss/accuracy or softmax
head; scripts/make_cam_net.py writes the results. A head may also stack several convolutions and poolings before
CAM_pool (the CAM authors' AlexNet-CAM: conv5, pool5, conv6, conv7 on CaffeNet's conv4).

The base net comes in with current `layer` messages (V1 `layers` and the legacy `input:` header already upgraded by
the caller, which has the engine for it), and the caller's `included(layer, phase)` says which layers a phase runs
(Caffe's include/exclude rules live in engine/netparam.py). The kept layers are copied untouched, so a backbone's
ImageNet .caffemodel still copies into them by name.
"""

import copy
import re
from dataclasses import dataclass

from caffecam.errors import CaffeCamError
from caffecam.nets.builders import constant, conv_relu, gaussian, inner_product, layer, pool, solver, xavier
from caffecam.proto import caffe_pb2

PHASES = (caffe_pb2.TRAIN, caffe_pb2.TEST)


def phase_only(lp, phase):
    """A stand-in for Caffe's rule that reads the phase alone (include: any rule of this phase; exclude: none)."""
    if len(lp.include):
        return any(not r.HasField("phase") or r.phase == phase for r in lp.include)
    return not any(r.HasField("phase") and r.phase == phase for r in lp.exclude)


def _producers(layers, active):
    """For each active layer index: the indices of the layers whose output it reads (the last writer of each bottom
    so far, so an in-place ReLU counts as producing its blob), and blob -> its last writer over the phase."""
    last, deps = {}, {}
    for i in active:
        lp = layers[i]
        deps[i] = {last[b] for b in lp.bottom if b in last}
        for t in lp.top:
            last[t] = i
    return deps, last


def _ancestors(end, deps):
    keep, todo = set(), [end]
    while todo:
        i = todo.pop()
        if i not in keep:
            keep.add(i)
            todo.extend(deps[i])
    return keep


def _check_branch(layers, cut, end, keep, deps):
    """A layer after the cut that reads both the cut's descendants and something the cut removes means the cut sits
    inside a branch (one path of an inception block, a residual branch with a projection shortcut)."""
    after = {end}
    for j in sorted(deps):
        if j > end and deps[j] & after:
            after.add(j)
            lost = sorted(deps[j] - after - keep)
            if lost:
                lp, gone = layers[j], layers[lost[0]]
                raise CaffeCamError(
                    f"--cut {cut}: is inside a branch: layer '{lp.name}' after it also reads '{gone.top[0]}' (from "
                    f"layer '{gone.name}'), which the cut removes; cut where the branches have joined, e.g. at "
                    f"'{lp.top[0]}'")


@dataclass
class Trunk:
    """The backbone up to the cut: `layers` (copies, in the base's order) for train_val, `deploy` those of the TEST
    phase, `inputs` the layers without bottoms (data or Input layers) among them, `blob` the cut blob."""
    name: str
    blob: str
    layers: list
    deploy: list
    inputs: list


def cut(base, blob, included=phase_only, source="the base net"):
    """The layers `blob` depends on in either phase, through the last layer writing it (an in-place ReLU after a
    Convolution included). `blob` may also name a layer with one top: the cut is then that layer's output."""
    layers = list(base.layer)
    blobs = {t for lp in layers for t in lp.top}
    if blob not in blobs:
        by_name = [lp for lp in layers if lp.name == blob]
        if len(by_name) == 1 and len(by_name[0].top) == 1:
            blob = by_name[0].top[0]
        else:
            last = [lp.top[0] for lp in layers if lp.top][-3:]
            raise CaffeCamError(f"--cut {blob}: {source} has no blob of that name (its last blobs: "
                                f"{', '.join(last)}); `scripts/net_summary.py` lists them all")
    kept, deploy = set(), set()
    for phase in PHASES:
        active = [i for i, lp in enumerate(layers) if included(lp, phase)]
        deps, last = _producers(layers, active)
        if blob not in last:
            continue
        end = last[blob]
        if not layers[end].bottom:
            raise CaffeCamError(f"--cut {blob}: is the net's input; cut at a feature map (e.g. the last "
                                "convolution's output)")
        keep = _ancestors(end, deps)
        _check_branch(layers, blob, end, keep, deps)
        kept |= keep
        if phase == caffe_pb2.TEST:
            deploy = keep
    inputs = [copy.deepcopy(layers[i]) for i in sorted(deploy) if not layers[i].bottom]
    return Trunk(base.name, blob, [copy.deepcopy(layers[i]) for i in sorted(kept)],
                 [copy.deepcopy(layers[i]) for i in sorted(deploy) if layers[i].bottom], inputs)


def check_spatial(blob, shape):
    """The cut blob must be a feature map: N×C×H×W with more than one position."""
    if len(shape) != 4 or shape[2] * shape[3] < 2:
        dims = "×".join(map(str, shape))
        raise CaffeCamError(f"--cut {blob}: has no spatial extent (shape {dims}); a class activation map needs a "
                            "convolutional feature map N×C×H×W, so cut before the global pooling or classifier")


def input_for_deploy(trunk, batch, size=None):
    """The deploy's Input layer: the base's own (batch set to `batch`, height/width to `size`) or, for a train_val
    base, one giving its data top the shape (batch, 3, crop, crop) of its TEST data layer."""
    if len(trunk.inputs) != 1:
        names = ", ".join(lp.name for lp in trunk.inputs) or "none"
        raise CaffeCamError(f"the cut keeps {len(trunk.inputs)} input layers ({names}); make_cam_net handles nets "
                            "with one image input")
    src = trunk.inputs[0]
    if src.type == "Input":
        lp = copy.deepcopy(src)
        del lp.top[1:]
        shape = caffe_pb2.BlobShape(dim=list(src.input_param.shape[0].dim))
        lp.input_param.ClearField("shape")
    else:
        crop = src.transform_param.crop_size
        lp = layer(src.name, "Input", tops=[src.top[0]])
        shape = caffe_pb2.BlobShape(dim=[1, 3, crop, crop])
    if size is not None:
        shape.dim[2:] = [size, size]
    if len(shape.dim) != 4 or not shape.dim[2]:
        raise CaffeCamError(f"layer '{src.name}': input size unknown; pass --input-size")
    shape.dim[0] = batch
    lp.input_param.shape.add().CopyFrom(shape)
    return lp


HEAD_SYNTAX = ("comma-separated items, each NAME:OUTPUTS[:gGROUP] (a 3×3, pad 1 Convolution and its ReLU) or "
               "NAME:maxK[sS] / NAME:aveK[sS] (a Pooling, kernel K, stride S, default 1), ending in a convolution")
_CONV_ITEM = re.compile(r"(\d+)(?::g(\d+))?")
_POOL_ITEM = re.compile(r"(max|ave)(\d+)(?:s(\d+))?")


@dataclass(frozen=True)
class HeadConv:
    """A 3×3, pad 1 Convolution with the seed's CAM_conv fillers, and its ReLU (see relu_name)."""
    name: str
    outputs: int
    group: int = 1


@dataclass(frozen=True)
class HeadPool:
    name: str
    method: str  # "MAX" or "AVE"
    kernel: int
    stride: int = 1


def relu_name(conv_name):
    """The ReLU of a head convolution: 'conv' -> 'relu' in its name (CAM_conv -> CAM_relu, conv5 -> relu5, the names
    the seed's and the CAM authors' nets use), else NAME_relu."""
    return conv_name.replace("conv", "relu", 1) if "conv" in conv_name else f"{conv_name}_relu"


def parse_head(spec):
    """--head's items (HEAD_SYNTAX) as HeadConv/HeadPool, e.g. the CAM authors' AlexNet-CAM:
    "conv5:384:g2,pool5:max3s1,conv6:512:g2,conv7:512:g2"."""
    items, names = [], set()
    for text in spec.split(","):
        name, _, rest = text.strip().partition(":")
        conv, pool_ = _CONV_ITEM.fullmatch(rest), _POOL_ITEM.fullmatch(rest)
        if not name or not (conv or pool_):
            raise CaffeCamError(f"--head {spec}: item '{text}' is not NAME:OUTPUTS[:gGROUP] or NAME:maxK[sS] / "
                                "NAME:aveK[sS], e.g. conv5:384:g2 or pool5:max3s1")
        if conv:
            item = HeadConv(name, int(conv[1]), int(conv[2] or 1))
            if item.outputs < 1 or item.group < 1 or item.outputs % item.group:
                raise CaffeCamError(f"--head {spec}: item '{text}': the outputs must be a positive multiple of the "
                                    "group")
        else:
            item = HeadPool(name, pool_[1].upper(), int(pool_[2]), int(pool_[3] or 1))
            if item.kernel < 1 or item.stride < 1:
                raise CaffeCamError(f"--head {spec}: item '{text}': kernel and stride must be positive")
        for layer_name in (name, relu_name(name)) if conv else (name,):
            if layer_name in names:
                raise CaffeCamError(f"--head {spec}: the name '{layer_name}' comes twice; give each item its own")
            names.add(layer_name)
        items.append(item)
    if not isinstance(items[-1], HeadConv):
        raise CaffeCamError(f"--head {spec}: ends in the pooling '{items[-1].name}'; end with a convolution (its "
                            "channels are the class activation maps' features)")
    return tuple(items)


@dataclass
class Head:
    """What goes on top of the cut: `stack` (HeadConv/HeadPool items; default the seed's single CAM_conv of
    `conv_outputs` and `group`), the classes, the global average pool `pool_name` with kernel `map_size` (the last
    convolution's height and width; None for global pooling), the classifier's name, an optional dropout before it."""
    num_classes: int
    map_size: tuple | None
    conv_outputs: int = 1024
    group: int = 2
    fc_name: str | None = None
    dropout: float | None = None
    conv_bias: float = 1.0  # the seed's; the CAM authors' VGG16-CAM has 0
    stack: tuple = ()
    pool_name: str = "CAM_pool"

    def items(self):
        return self.stack or (HeadConv("CAM_conv", self.conv_outputs, self.group),)

    def fc(self):
        return self.fc_name or f"CAM_fc_{self.num_classes}"


def head_stack(bottom, head):
    """The head's convolutions (each with its ReLU) and poolings on `bottom`, and the blob they end in."""
    layers = []
    for item in head.items():
        if isinstance(item, HeadConv):
            layers += conv_relu(item.name, relu_name(item.name), bottom, item.outputs, 3, pad=1, group=item.group,
                                weight_filler=gaussian(0.01), bias_filler=constant(head.conv_bias))
        else:
            layers.append(pool(item.name, bottom, item.method, kernel=item.kernel, stride=item.stride))
        bottom = item.name
    return layers, bottom


def cam_head(bottom, head, kind):
    """The head's stack (the seed's CAM_conv and CAM_relu), CAM_pool[, CAM_dropout], CAM_fc_<N>, then softmax `prob`
    (kind "prob") or, for "loss", the seed's loss3/loss3 and TEST-only loss3/top-1, loss3/top-5 (top-5 only with at
    least 5 classes: Caffe's Accuracy needs top_k <= classes)."""
    fc, gap = head.fc(), head.pool_name
    layers, bottom = head_stack(bottom, head)
    if head.map_size is None:
        layers.append(pool(gap, bottom, "AVE", global_pooling=True))
    elif head.map_size[0] == head.map_size[1]:
        layers.append(pool(gap, bottom, "AVE", kernel=head.map_size[0], stride=head.map_size[0]))
    else:
        lp = layer(gap, "Pooling", [bottom], [gap])
        pp = lp.pooling_param
        pp.pool = caffe_pb2.PoolingParameter.AVE
        pp.kernel_h, pp.kernel_w = head.map_size
        pp.stride_h, pp.stride_w = head.map_size
        layers.append(lp)
    if head.dropout is not None:
        drop = layer("CAM_dropout", "Dropout", [gap], [gap])
        drop.dropout_param.dropout_ratio = head.dropout
        layers.append(drop)
    layers.append(inner_product(fc, gap, head.num_classes, xavier(), constant(0)))
    if kind == "prob":
        return layers + [layer("prob", "Softmax", [fc], ["prob"])]
    if kind != "loss":
        raise CaffeCamError(f"head={kind!r}: use 'prob' (deploy) or 'loss' (train/val)")
    loss = layer("loss3/loss3", "SoftmaxWithLoss", [fc, "label"], ["loss3/loss3"])
    loss.loss_weight.append(1)
    layers += [loss, layer("loss3/top-1", "Accuracy", [fc, "label"], ["loss3/top-1"], phase=caffe_pb2.TEST)]
    if head.num_classes >= 5:
        top5 = layer("loss3/top-5", "Accuracy", [fc, "label"], ["loss3/top-5"], phase=caffe_pb2.TEST)
        top5.accuracy_param.top_k = 5
        layers.append(top5)
    return layers


def check_head(head, channels, trunk=None):
    """The head fits the cut blob's `channels` and, given the trunk, takes no name of its layers or blobs."""
    if head.num_classes < 2:
        raise CaffeCamError(f"--classes {head.num_classes}: a classifier needs at least 2 classes")
    if not head.stack and (head.conv_outputs < 1 or head.group < 1 or head.conv_outputs % head.group):
        raise CaffeCamError(f"--conv-outputs {head.conv_outputs} --group {head.group}: the outputs must be a "
                            "positive multiple of the group")
    for item in head.items():
        if not isinstance(item, HeadConv):
            continue
        if channels % item.group:
            if not head.stack:
                raise CaffeCamError(f"--group {item.group}: the cut blob's {channels} channels do not divide into "
                                    f"{item.group} groups; use --group 1")
            raise CaffeCamError(f"--head item '{item.name}': its {channels} input channels do not divide into "
                                f"{item.group} groups; use :g1 or a group that divides {channels}")
        channels = item.outputs
    if head.dropout is not None and not 0 <= head.dropout < 1:
        raise CaffeCamError(f"--dropout {head.dropout}: must lie in [0, 1)")
    if trunk is not None:
        taken = {lp.name for lp in trunk.layers} | {t for lp in trunk.layers for t in lp.top}
        for lp in head_stack(trunk.blob, head)[0] + [layer(head.pool_name, "Pooling"), layer(head.fc(), "Fc")]:
            if lp.name in taken:
                raise CaffeCamError(f"the head's '{lp.name}' is already a layer or blob of the kept net; name it "
                                    "otherwise (--head, --pool-name, --fc-name)")
            taken.add(lp.name)


def train_val(trunk, head, name, data=None):
    """The train/val net: `data` (data layers) replacing the trunk's inputs, or the base's own data layers."""
    body = [lp for lp in trunk.layers if lp.bottom]
    if data is None:
        if any(lp.type == "Input" for lp in trunk.inputs) or not trunk.inputs:
            raise CaffeCamError("the base is a deploy net (an Input layer): give --train-list and --val-list, or "
                                "--lmdb TRAIN_DB VAL_DB, for the train_val's data layers")
        data = [lp for lp in trunk.layers if not lp.bottom]
    tops = {t for lp in data for t in lp.top}
    if "label" not in tops:
        raise CaffeCamError("the data layers give no 'label' blob for the loss; use --train-list/--val-list or "
                            "--lmdb")
    wanted = {b for lp in body for b in lp.bottom} - {t for lp in body for t in lp.top}
    missing = sorted(wanted - tops)
    if missing:
        raise CaffeCamError(f"the data layers give no '{missing[0]}' blob, which layer "
                            f"'{next(lp.name for lp in body if missing[0] in lp.bottom)}' reads")
    net = caffe_pb2.NetParameter(name=name)
    net.layer.extend(list(data) + body + cam_head(trunk.blob, head, "loss"))
    return net


def deploy(trunk, head, name, input_layer):
    net = caffe_pb2.NetParameter(name=name)
    net.layer.extend([input_layer] + trunk.deploy + cam_head(trunk.blob, head, "prob"))
    return net


def cam_solver(net_path, snapshot_prefix, base_lr=0.0005, stepsize=2000, max_iter=3000, test_iter=20,
               test_interval=500, snapshot=1000, solver_mode="GPU"):
    """The seed's solver (base_lr 0.0005, step ×0.1 every 2000 iterations, 3000 iterations) unless told otherwise."""
    return solver(net_path, test_iter=test_iter, test_interval=test_interval, base_lr=base_lr, stepsize=stepsize,
                  max_iter=max_iter, snapshot=snapshot, snapshot_prefix=snapshot_prefix, solver_mode=solver_mode)
