"""What a net's forward costs in arithmetic: multiply-adds per layer (net_summary.py prints them, the bench turns
them into GFLOP/s and a fraction of the machine's peak)."""

import math


def macs(lp, layer, bottom_shapes, top_shapes):
    """Multiply-adds of one forward: Convolution, Deconvolution and InnerProduct only (each output element is a dot
    product over one filter's taps); elementwise layers, pooling and normalization count 0."""
    if not len(layer.blobs) or lp.type not in ("Convolution", "Deconvolution", "InnerProduct"):
        return 0
    taps = layer.blobs[0].numel()
    if lp.type == "Deconvolution":  # each input element is scattered through one filter column
        return math.prod(bottom_shapes[0]) * taps // bottom_shapes[0][1]
    outputs = (lp.convolution_param if lp.type == "Convolution" else lp.inner_product_param).num_output
    return math.prod(top_shapes[0]) * taps // outputs


def layer_macs(net):
    """Multiply-adds of each layer of `net` at its set-up shapes, in net order."""
    return [macs(lp, layer, [net.blob_shapes[b] for b in lp.bottom], layer.top_shapes)
            for lp, layer in zip(net.layer_params, net.layers)]


def forward_flops_per_image(net):
    """FLOPs (2 per multiply-add) of one forward per image: the set-up batch divides the total."""
    batch = next((net.blob_shapes[b][0] for b in net.input_blobs if len(net.blob_shapes[b]) == 4), 1)
    return 2 * sum(layer_macs(net)) / batch
