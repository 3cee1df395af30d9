"""Print a net's blob shapes, parameter shapes, parameter count and multiply-adds, as Caffe logs them when it sets a
net up; with --time, per-layer forward/backward milliseconds as `caffe time` prints them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import math
import time

from caffecam.errors import CaffeCamError, main_guard


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
    p.add_argument("--time", action="store_true",
                   help="also run each layer forward and backward on seeded data and print the average milliseconds "
                   "per layer and per pass, as `caffe time` does")
    p.add_argument("--iterations", type=int, default=50, metavar="N",
                   help="--time iterations (default 50, as caffe time)")
    return p.parse_args(argv)


if __name__ == "__main__":  # --help and option errors answer before torch loads (over a second)
    parse_args(sys.argv[1:])

import torch

from caffecam.engine.cost import layer_macs
from caffecam.engine.layers import INPUT_TYPES
from caffecam.engine.net import Net
from caffecam.engine.prototxt import read_net
from caffecam.engine.upgrade import upgrade_net
from caffecam.engine.weights import load_weights
from caffecam.proto import caffe_pb2


def dims_text(shape):
    return f"{' '.join(str(d) for d in shape)} ({math.prod(shape)})" if shape else "scalar (1)"


def upgrade_notes(net_param):
    """What Caffe's UpgradeNetAsNeeded changes in this file, in words (upgrade.py does it the same way)."""
    notes = upgrade_net(net_param)[1]
    if len(net_param.input_dim):
        notes.append("legacy `input_dim` header read as an input shape")
    elif len(net_param.input):
        notes.append("legacy `input:` header read as an Input layer")
    return notes


def total_params(net):
    return sum(p.numel() for blobs in net.params.values() for p in blobs)


def summary(net):
    """The --json structure: blob shapes in set-up order, learnable blob shapes per layer, total count."""
    params = {name: [list(p.shape) for p in blobs] for name, blobs in net.params.items()}
    counts = layer_macs(net)
    return {"blobs": {name: list(shape) for name, shape in net.blob_shapes.items()}, "params": params,
            "total_params": total_params(net),
            "macs": {lp.name: n for lp, n in zip(net.layer_params, counts) if n}, "total_macs": sum(counts)}


def text_lines(net):
    lines = [f"Net '{net.name}', phase {caffe_pb2.Phase.Name(net.phase)}; inputs: {', '.join(net.input_blobs)}"]
    counts = layer_macs(net)
    for lp, layer, n in zip(net.layer_params, net.layers, counts):
        where = f"{', '.join(lp.bottom)} -> {', '.join(lp.top)}" if lp.bottom else f"-> {', '.join(lp.top)}"
        lines.append(f"{lp.name} ({lp.type}): {where}")
        for top, shape in zip(lp.top, layer.top_shapes):
            lines.append(f"    Top shape: {top}: {dims_text(shape)}")
        for i, blob in enumerate(layer.blobs):
            lines.append(f"    Param {i}: {dims_text(tuple(blob.shape))}")
        if n:
            lines.append(f"    Multiply-adds: {n:,}")
    for i, name in enumerate(net.output_blobs):
        weight = net.loss_weights.get(name)
        lines.append(f"Net output #{i}: {name}" + (f" (loss weight {weight:g})" if weight else ""))
    lines.append(f"Total parameters: {total_params(net)} in {sum(len(b) for b in net.params.values())} blobs "
                 f"of {len(net.params)} layers")
    lines.append(f"Total multiply-adds per forward: {sum(counts):,} ({sum(counts) / 1e9:.3f} G; one multiply-add = "
                 "2 FLOPs; Convolution, Deconvolution and InnerProduct only)")
    return lines


def time_layers(net, iterations, progress=None):
    """{layer: (forward ms, backward ms)} averaged over `iterations`, each layer run alone on the tops its
    predecessors computed from a seeded input (as `caffe time`, which also times layer by layer)."""
    generator = torch.Generator().manual_seed(0)
    # An input that layers read only as a second bottom is a label or a target (SoftmaxWithLoss, Accuracy,
    # EuclideanLoss …): zeros, a class every classifier has, where seeded noise would be a label like −1.
    first = {lp.bottom[0] for lp in net.layer_params if lp.bottom}
    blobs = {b: torch.randn(net.blob_shapes[b], generator=generator) if b in first else
             torch.zeros(net.blob_shapes[b]) for b in net.input_blobs}
    with torch.no_grad():
        blobs = net.forward(blobs)  # every bottom each layer reads, computed once
    result = {}
    for lp, layer in zip(net.layer_params, net.layers):
        if lp.type in INPUT_TYPES:
            continue
        fwd = bwd = 0.0
        for _ in range(iterations):
            leaves = [blobs[b].detach().requires_grad_(blobs[b].is_floating_point()) for b in lp.bottom]
            inputs = [x.clone() for x in leaves]  # an in-place layer may write its bottom; a leaf cannot be written
            start = time.perf_counter()
            tops = layer(*inputs)
            fwd += time.perf_counter() - start
            tops = [t for t in tops if t.requires_grad]
            if tops:
                grads = [torch.ones_like(t) for t in tops]
                start = time.perf_counter()
                torch.autograd.backward(tops, grads)
                bwd += time.perf_counter() - start
        result[lp.name] = (1000 * fwd / iterations, 1000 * bwd / iterations)
        if progress:
            progress.update(1)
    return result


def time_lines(times, iterations):
    lines = [f"Average time per layer ({iterations} iterations):"]
    for name, (fwd, bwd) in times.items():
        lines += [f"{name:>24}\tforward: {fwd:.4f} ms.", f"{name:>24}\tbackward: {bwd:.4f} ms."]
    fwd, bwd = sum(t[0] for t in times.values()), sum(t[1] for t in times.values())
    return lines + [f"Average Forward pass: {fwd:.4f} ms.", f"Average Backward pass: {bwd:.4f} ms.",
                    f"Average Forward-Backward: {fwd + bwd:.4f} ms."]


@main_guard
def main(argv=None):
    args = parse_args(argv)
    input_shapes = dict(parse_input_shape(t) for t in args.input_shape)
    if args.iterations < 1:
        raise CaffeCamError(f"--iterations {args.iterations}: must be at least 1")
    phase = caffe_pb2.TRAIN if args.phase == "TRAIN" else caffe_pb2.TEST
    net_param = read_net(args.prototxt)
    for note in upgrade_notes(net_param):  # a file mixing both layer lists is refused here, before anything else
        print(f"{args.prototxt}: {note}, as Caffe upgrades it", file=sys.stderr)
    # Shapes only: the parameters are meta tensors, so a net far too large for this machine is still described;
    # --time computes, so there they are allocated.
    net = Net(net_param, phase, input_shapes=input_shapes, seed=0, level=args.level, stages=args.stage,
              meta=not args.time)
    if args.weights:
        log = (lambda line: print(line, file=sys.stderr)) if args.json else print
        load_weights(net, args.weights, log=log)
    if args.json:
        print(json.dumps(summary(net), indent=1))
    else:
        print("\n".join(text_lines(net)))
    if args.time:
        from tqdm import tqdm
        with tqdm(total=len(net.layers), desc="timing layers", unit="layer", file=sys.stderr) as bar:
            times = time_layers(net, args.iterations, bar)
        print("\n".join(time_lines(times, args.iterations)), file=sys.stderr if args.json else sys.stdout)


if __name__ == "__main__":
    main()
