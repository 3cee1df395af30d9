"""Print a net's blob shapes, parameter shapes and parameter count, as Caffe logs them when it sets a net up."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import math

from caffecam.engine.net import Net
from caffecam.engine.prototxt import read_net
from caffecam.engine.weights import load_weights
from caffecam.errors import CaffeCamError, main_guard
from caffecam.proto import caffe_pb2


def parse_input_shape(text):
    """'data=1,3,224,224' -> ('data', (1, 3, 224, 224))."""
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise CaffeCamError(f"--input-shape '{text}': expected BLOB=N,C,H,W with positive integers, "
                            "e.g. data=1,3,224,224")
    return name, shape


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Build a Caffe net from its prototxt and print each layer's top blob shapes and parameter "
        "shapes and the total parameter count (what Caffe logs at net set-up). Nothing is computed on data.")
    p.add_argument("prototxt", help="net definition (.prototxt, current or legacy V1 format)")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default="TEST",
                   help="which phase's layers to include (default: TEST)")
    p.add_argument("--weights", metavar="W",
                   help="also check these .caffemodel files (comma-separated) against the net: that their "
                   "shapes fit, and print the copy report")
    p.add_argument("--json", action="store_true",
                   help='print {"blobs": {name: [dims]}, "params": {layer: [[dims], ...]}, "total_params": N} '
                   "instead of the text listing")
    p.add_argument("--input-shape", action="append", default=[], metavar="BLOB=N,C,H,W",
                   help="override an input blob's shape (repeatable), e.g. data=1,3,224,224; needed for Data or "
                   "ImageData layers whose size the prototxt does not fix")
    p.add_argument("--level", type=int, default=0, help="net state level for include/exclude rules (default 0)")
    p.add_argument("--stage", action="append", default=[], help="net state stage (repeatable)")
    return p.parse_args(argv)


def dims_text(shape):
    return f"{' '.join(str(d) for d in shape)} ({math.prod(shape)})" if shape else "scalar (1)"


def total_params(net):
    return sum(p.numel() for blobs in net.params.values() for p in blobs)


def summary(net):
    """The --json structure: blob shapes in set-up order, learnable blob shapes per layer, total count."""
    params = {name: [list(p.shape) for p in blobs] for name, blobs in net.params.items()}
    return {"blobs": {name: list(shape) for name, shape in net.blob_shapes.items()}, "params": params,
            "total_params": total_params(net)}


def text_lines(net):
    lines = [f"Net '{net.name}', phase {caffe_pb2.Phase.Name(net.phase)}; inputs: {', '.join(net.input_blobs)}"]
    for lp, layer in zip(net.layer_params, net.layers):
        where = f"{', '.join(lp.bottom)} -> {', '.join(lp.top)}" if lp.bottom else f"-> {', '.join(lp.top)}"
        lines.append(f"{lp.name} ({lp.type}): {where}")
        for top, shape in zip(lp.top, layer.top_shapes):
            lines.append(f"    Top shape: {top}: {dims_text(shape)}")
        for i, blob in enumerate(layer.blobs):
            lines.append(f"    Param {i}: {dims_text(tuple(blob.shape))}")
    for i, name in enumerate(net.output_blobs):
        weight = net.loss_weights.get(name)
        lines.append(f"Net output #{i}: {name}" + (f" (loss weight {weight:g})" if weight else ""))
    lines.append(f"Total parameters: {total_params(net)} in {sum(len(b) for b in net.params.values())} blobs "
                 f"of {len(net.params)} layers")
    return lines


@main_guard
def main(argv=None):
    args = parse_args(argv)
    input_shapes = dict(parse_input_shape(t) for t in args.input_shape)
    phase = caffe_pb2.TRAIN if args.phase == "TRAIN" else caffe_pb2.TEST
    # Shapes only: the parameters are meta tensors, so a net far too large for this machine is still described.
    net = Net(read_net(args.prototxt), phase, input_shapes=input_shapes, seed=0, level=args.level,
              stages=args.stage, meta=True)
    if args.weights:
        log = (lambda line: print(line, file=sys.stderr)) if args.json else print
        load_weights(net, args.weights, log=log)
    if args.json:
        print(json.dumps(summary(net), indent=1))
    else:
        print("\n".join(text_lines(net)))


if __name__ == "__main__":
    main()
