"""Which layers of a net run in float32 under bfloat16 autocast (Net.forward), and which of those may take
bfloat16 bottoms as they are because they compute in float32 inside and round their top once (Layer.rounds_once).
"""

from caffecam.proto import caffe_pb2

# Statistics over many values: in bfloat16 a sum of squares moves in steps of 2^-7 of itself, and BatchNorm's
# moving average (fraction 0.999) would not move at all. LRN: a power of such a sum.
_FLOAT32_TYPES = {"LRN", "BatchNorm", "MVN"}


def float32_layers(layer_params):
    """Indices of the layers that run in float32 under autocast (autocast's own rule for softmax, losses and pow):
    _FLOAT32_TYPES, the Softmax, loss and Accuracy layers, and the layers writing the scores they read (rounded to
    bfloat16, near scores tie, Accuracy counts a tie as wrong and the top-k probabilities would swap)."""
    out = set()
    for i, lp in enumerate(layer_params):
        if lp.type in _FLOAT32_TYPES:
            out.add(i)
        elif (lp.type in ("Accuracy", "Softmax") or lp.type.endswith("Loss")) and lp.bottom:
            out.add(i)
            out.update(j for j in range(i) if lp.bottom[0] in layer_params[j].top)
    return out


def _readers_lower(layer_params, i):
    """Whether every reader of layer i's top (until a layer writes it again) lowers it to bfloat16 under autocast
    anyway: a Convolution, Deconvolution or InnerProduct, or a MAX Pooling (whose maximum of rounded values is the
    rounded maximum) whose own readers do."""
    top = layer_params[i].top[0]
    readers = []
    for j in range(i + 1, len(layer_params)):
        if top in layer_params[j].bottom:
            readers.append(j)
        if top in layer_params[j].top:
            break
    for j in readers:
        lp = layer_params[j]
        if lp.type in ("Convolution", "Deconvolution", "InnerProduct") and len(lp.bottom) == 1:
            continue
        if lp.type == "Pooling" and lp.pooling_param.pool == caffe_pb2.PoolingParameter.MAX and len(lp.top) == 1 \
                and lp.top[0] != top and _readers_lower(layer_params, j):
            continue
        return False
    return bool(readers)


def rounded_tops(layer_params, float32):
    """Indices of the float32 layers (LRN) that may keep a bfloat16 top, rounded once, under autocast: one top,
    every reader of which would lower it anyway (_readers_lower)."""
    return {i for i in float32 if len(layer_params[i].top) == 1 and _readers_lower(layer_params, i)}
