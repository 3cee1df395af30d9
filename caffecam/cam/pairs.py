"""The CAM pair: the feature blob a global average pooling reads, and the linear classifier after that pooling.

Found by itself in the published heads: GAP -> InnerProduct (ResNet, GoogLeNet, GoogLeNet-CAM), GAP -> 1×1
Convolution (MobileNet), and GAP -> Softmax with no classifier at all (SqueezeNet: the class maps are the feature
blob's own channels, an identity classifier). Only the shapes and the layer graph are read, so a net built with
meta=True will do.
"""

from dataclasses import dataclass

import torch

from caffecam.errors import CaffeCamError, net_label

# Layers between the pooling and the classifier that leave the pooled values alone (at TEST).
PASS_THROUGH = {"Dropout", "Flatten", "Split", "Reshape"}
CLASSIFIERS = {"InnerProduct", "Convolution"}
OVERRIDE = "name the pair with --feature-blob and --fc-layer"


class NoCamPair(CaffeCamError):
    """The net has no head CAM can read (no global average pooling before a linear classifier, or a non-linear layer
    between them); `reason` says which in a few words, for the line that announces the Grad-CAM fallback."""

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CamLayers:
    feature_blob: str  # the blob the global average pooling reads (A_k)
    fc_layer: str | None  # the classifier (w): InnerProduct or 1×1 Convolution; None = identity (SqueezeNet)
    score_blob: str  # class scores before softmax
    prob_blob: str | None  # the Softmax over the scores, when the net has one
    end_layer: str  # the last layer the forward pass needs
    pool_layer: str | None

    @property
    def identity(self):
        return self.fc_layer is None

    def describe(self):
        """The pair as the output names it."""
        if self.identity:
            return (f"'{self.feature_blob}' channels as class maps (identity classifier: '{self.pool_layer}' "
                    "feeds the softmax directly)")
        return f"'{self.feature_blob}' × '{self.fc_layer}'"


def _writer_before(net, blob, index):
    """Index of the last layer before `index` that writes `blob` (in-place layers included), or None."""
    for i in range(index - 1, -1, -1):
        if blob in net.layer_params[i].top:
            return i
    return None


def _reader_after(net, blob, index):
    """Index of the first layer after `index` that reads `blob`, or None."""
    for i in range(index + 1, len(net.layer_params)):
        if blob in net.layer_params[i].bottom:
            return i
    return None


def _is_gap(net, lp):
    p = lp.pooling_param
    if lp.type != "Pooling" or p.pool != p.AVE:
        return False
    if p.global_pooling:
        return True
    shape = net.blob_shapes[lp.bottom[0]]
    kernel = (p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else (p.kernel_size,) * 2
    pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") or p.HasField("pad_w") else (p.pad,) * 2
    return len(shape) == 4 and tuple(kernel) == tuple(shape[2:]) and pad == (0, 0)


def _gap_feeding(net, index):
    """The global-average Pooling layer feeding layer `index` (through pass-through layers), or None."""
    blob, i = net.layer_params[index].bottom[0], index
    while True:
        i = _writer_before(net, blob, i)
        if i is None:
            return None
        lp = net.layer_params[i]
        if lp.type == "Pooling":
            return lp if _is_gap(net, lp) else None
        if lp.type not in PASS_THROUGH:
            return None
        blob = lp.bottom[0]


def _head_after(net, index):
    """Follow the pooling at `index` forward past pass-through layers -> (classifier index or None, scores blob).

    None means the pooled values are the class scores themselves (SqueezeNet); a layer that is neither pass-through
    nor a classifier (ReLU, BatchNorm, Scale, ...) is not linear in the map sum, so CAM would draw a wrong map.
    """
    pool = net.layer_params[index]
    blob, i = pool.top[0], index
    while True:
        j = _reader_after(net, blob, i)
        lp = net.layer_params[j] if j is not None else None
        if lp is None or lp.type == "Softmax" or lp.type.endswith(("Loss", "Accuracy")):
            return None, blob
        if lp.type in CLASSIFIERS:
            return j, lp.top[0]
        if lp.type not in PASS_THROUGH:
            raise NoCamPair(
                f"{net_label(net.name)}: {lp.type} layer '{lp.name}' sits between the global average pooling "
                f"'{pool.name}' and the classifier; it is not linear in the map sum, so CAM would draw a wrong map; "
                f"{OVERRIDE} to use another pair",
                f"{lp.type} layer '{lp.name}' after the global average pooling '{pool.name}' is not linear in the "
                "map sum")
        blob, i = lp.top[0], j


def _candidates(net, feature_blob, fc_layer):
    """(classifier index or None, feature blob, pooling name or None, scores blob) of the pair asked for."""
    params = net.layer_params
    if fc_layer is not None:
        index = [lp.name for lp in params].index(fc_layer)
        pool = _gap_feeding(net, index)
        if pool is not None and feature_blob in (None, pool.bottom[0]):
            return index, pool.bottom[0], pool.name, params[index].top[0]
        if feature_blob is not None:
            return index, feature_blob, None, params[index].top[0]
        return None
    for index in range(len(params) - 1, -1, -1):  # the last GAP is the head
        lp = params[index]
        if _is_gap(net, lp) and feature_blob in (None, lp.bottom[0]):
            head, score = _head_after(net, index)
            return head, lp.bottom[0], lp.name, score
    return None


def find_cam_layers(net, feature_blob=None, fc_layer=None):
    """Locate the classifier fed by a global average pooling (or none: SqueezeNet) and the blob the pooling reads.

    `fc_layer` / `feature_blob` narrow the search; given both, a net without the pooling is accepted as long as
    the classifier's input width equals the feature blob's channel count.
    """
    names = [lp.name for lp in net.layer_params]
    if fc_layer is not None and fc_layer not in names:
        raise CaffeCamError(f"--fc-layer {fc_layer}: no such layer in {net_label(net.name)}")
    if feature_blob is not None and feature_blob not in net.blob_shapes:
        raise CaffeCamError(f"--feature-blob {feature_blob}: no such blob in {net_label(net.name)}")
    if fc_layer is not None and net.layer_params[names.index(fc_layer)].type not in CLASSIFIERS:
        raise CaffeCamError(f"--fc-layer {fc_layer}: is a {net.layer_params[names.index(fc_layer)].type} layer, "
                            "not an InnerProduct or a 1×1 Convolution")
    found = _candidates(net, feature_blob, fc_layer)
    if found is None:
        wanted = "an InnerProduct layer" if fc_layer is None else f"classifier '{fc_layer}'"
        src = "a blob" if feature_blob is None else f"blob '{feature_blob}'"
        raise NoCamPair(
            f"{net_label(net.name)}: found no {wanted} fed by a global average pooling of {src} (looked for a Pooling "
            "layer with pool: AVE and global_pooling: true or a kernel covering its whole input, whose top feeds an "
            f"InnerProduct, a 1×1 Convolution or the Softmax); CAM needs that structure, or {OVERRIDE}",
            "no global average pooling feeds the classifier")
    index, feature, pool_name, score = found
    fshape = net.blob_shapes[feature]
    if len(fshape) != 4:
        raise CaffeCamError(f"feature blob '{feature}' has shape {fshape}: CAM needs a N×C×H×W blob")
    if index is not None:
        fc = net.layer_params[index]
        width = classifier_weight(net, fc.name).shape[1]
        if fshape[1] != width:
            raise CaffeCamError(f"feature blob '{feature}' has shape {fshape} but classifier '{fc.name}' takes "
                                f"{width} inputs: CAM needs one classifier weight per feature channel")
    prob, end = None, (net.layer_params[index].name if index is not None else pool_name)
    start = index if index is not None else names.index(pool_name)
    for lp in net.layer_params[start + 1:]:
        if lp.type == "Softmax" and list(lp.bottom) == [score]:
            prob, end = lp.top[0], lp.name
            break
    if index is None:
        # The scores are the pooled channels, but a pass-through layer (Flatten) may have renamed them.
        end = end if prob else net.layer_params[_writer_before(net, score, len(names))].name
    return CamLayers(feature, None if index is None else net.layer_params[index].name, score, prob, end, pool_name)


def classifier_weight(net, fc_layer):
    """The classifier's weight as (num_classes, channels): an InnerProduct's matrix (transposed when the layer says
    so) or a 1×1 Convolution's filters (classes × channels × 1 × 1), which act on a 1×1 pooled map the same way."""
    layer, lp = net.layer_by_name[fc_layer], net.layer_params[[p.name for p in net.layer_params].index(fc_layer)]
    weight = layer.blobs[0]
    if lp.type == "Convolution":
        out_shape = net.blob_shapes[lp.top[0]]
        if tuple(weight.shape[2:]) != (1, 1) or any(d != 1 for d in out_shape[2:]):
            raise CaffeCamError(f"classifier '{fc_layer}': a Convolution classifier must be 1×1 with one group and "
                                f"no padding (weight {tuple(weight.shape)}, output {tuple(out_shape)}); {OVERRIDE}")
        return weight.reshape(weight.shape[0], weight.shape[1])
    return weight.t() if getattr(layer, "transpose", False) else weight


def identity_weight(channels, device=None):
    """SqueezeNet's 'classifier': class c's map is channel c."""
    return torch.eye(channels, device=device)
