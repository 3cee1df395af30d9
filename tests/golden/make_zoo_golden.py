"""Record real BVLC Caffe's shapes and forward of the public zoo nets in tests/zoo/, for tests/engine/test_zoo.py.

Run (needs real Caffe with pycaffe; the tests need neither):

    source /work/caffe-ref/env.sh
    $CAFFE_PYTHON tests/golden/make_zoo_golden.py [--only NET,...]

Writes tests/golden/zoo/<net>.json (small: no weights), for every tests/zoo/*.prototxt that BVLC Caffe accepts:
  blob_shapes   [[blob, shape]] in Caffe's order (not the Split tops Caffe inserts), at the input shape the
                prototxt declares (batch 10 for most)
  param_shapes  [[layer, [shape of each blob]]]
  input, input_shape   the one input blob and the shape the forward ran at (batch 1)
  bn_factor     {BatchNorm layer: its scale-factor blob}, measured during the forward (see zoo_weights.py)
  outputs       {blob: {shape, values}}: the net's outputs, and the bottom of a final Softmax (its logits)
  spots         {blob: [[flat index, value]]}: 8 values of each of 6 inner blobs spread over the net
Weights and input are zoo_weights.py's formulas. Must not import torch or caffecam.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import zoo_weights as zw  # noqa: I001 (a sibling module: this script runs from its own folder)

HERE = Path(__file__).resolve().parent
ZOO = HERE.parent / "zoo"
OUT = HERE / "zoo"


def f32(x):
    return float(np.float32(x))


def set_weights(net, layer_types, bn):
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            if layer_types[name] == "BatchNorm" and name not in bn:
                continue  # set when the forward reaches it
            blob.data[...] = zw.blob_values(layer_types[name], name, i, blob.data.shape, bn.get(name))


def forward_measuring_bn(net, layer_types):
    """Layer by layer; before each BatchNorm, its factor from the variance of its bottom as Caffe computed it."""
    bn = {}
    for name in net._layer_names:
        if layer_types[name] == "BatchNorm":
            x = net.blobs[net.bottom_names[name][0]].data
            measured = x.transpose(1, 0, *range(2, x.ndim)).reshape(x.shape[1], -1).var(axis=1).mean()
            var_mean = zw.blob_values("BatchNorm", name, 1, net.params[name][1].data.shape).mean()
            bn[name] = zw.bn_factor(var_mean, measured)
            for i, blob in enumerate(net.params[name]):
                blob.data[...] = zw.blob_values("BatchNorm", name, i, blob.data.shape, bn[name])
        net.forward(start=name, end=name)
    return bn


def spot_indices(count, k=8):
    return sorted({(j * 7919 + 13) * 104729 % count for j in range(k)})


def record(caffe, path):
    net = caffe.Net(str(path), caffe.TEST)
    layer_types = {name: layer.type for name, layer in zip(net._layer_names, net.layers)}
    # Caffe inserts Split layers where a blob has several readers; their tops are not the prototxt's blobs.
    splits = {t for n in net._layer_names if layer_types[n] == "Split" for t in net.top_names[n]}
    out = {"net": path.stem,
           "blob_shapes": [[b, list(v.data.shape)] for b, v in net.blobs.items() if b not in splits],
           "param_shapes": [[n, [list(b.data.shape) for b in blobs]] for n, blobs in net.params.items()]}
    inputs = list(net.inputs)
    assert len(inputs) == 1, inputs
    shape = (1,) + tuple(net.blobs[inputs[0]].data.shape[1:])
    net.blobs[inputs[0]].reshape(*shape)
    net.reshape()
    set_weights(net, layer_types, {})
    net.blobs[inputs[0]].data[...] = zw.net_input(shape)
    bn = forward_measuring_bn(net, layer_types)
    wanted = list(net.outputs)
    last = list(net._layer_names)[-1]
    if layer_types[last] == "Softmax":
        wanted.append(net.bottom_names[last][0])
    out.update(input=inputs[0], input_shape=list(shape), bn_factor=bn,
               outputs={b: {"shape": list(net.blobs[b].data.shape), "values": [f32(v) for v in net.blobs[b].data.flat]}
                        for b in wanted})
    names = [b for b in net.blobs if b not in wanted and b != inputs[0] and b not in splits]
    picks = [names[round(k * (len(names) - 1) / 5)] for k in range(6)]
    out["spots"] = {b: [[i, f32(net.blobs[b].data.flat[i])] for i in spot_indices(net.blobs[b].data.size)]
                    for b in picks}
    worst = max(abs(v) for o in out["outputs"].values() for v in o["values"])
    assert np.isfinite(worst), f"{path.stem}: output not finite"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated net names (tests/zoo/<name>.prototxt)")
    args = ap.parse_args()
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    caffe.set_mode_cpu()
    OUT.mkdir(exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    for path in sorted(ZOO.glob("*.prototxt")):
        if only and path.stem not in only:
            continue
        rec = record(caffe, path)
        (OUT / f"{path.stem}.json").write_text(json.dumps(rec, separators=(",", ":")) + "\n")
        print(path.stem, "recorded", file=sys.stderr)


if __name__ == "__main__":
    main()
