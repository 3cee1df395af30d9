"""Caffe's extract_features: the values of named blobs over many inputs, in one .npz."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

import numpy as np

# Only what parsing and the option checks need is imported here (no torch): --help and option errors come at once.
# The engine in main().
from caffecam.allocator import keep_freed_memory
from caffecam.data.images import collect_inputs
from caffecam.data.net_input import NetInput, add_input_args, input_options, load_npy
from caffecam.errors import CaffeCamError, main_guard


def build_parser():
    p = argparse.ArgumentParser(
        description="Run a Caffe net over images (or a preprocessed array) and save the values of named blobs,\n"
                    "as Caffe's extract_features does: one array per blob in the .npz (key = the blob name as\n"
                    "written, slashes included; first axis = inputs) plus `names`, the inputs in order. A blob\n"
                    "written in place by several layers holds the value after the last of them.",
        epilog="examples:\n"
               "  scripts/extract_features.py --model prototxt/googlenet_cam_deploy.prototxt \\\n"
               "      --weights W.caffemodel --blobs inception_4e/output,CAM_pool --out results/features.npz \\\n"
               "      data/demo/val.txt\n"
               "  scripts/extract_features.py --model deploy.prototxt --weights W.caffemodel --blobs fc7 \\\n"
               "      --input batch.npy --out fc7.npz          (batch.npy: N×C×H×W float32, already preprocessed)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="images, folders (recursive) or list files")
    p.add_argument("--model", required=True, help="deploy prototxt")
    p.add_argument("--weights", required=True, help=".caffemodel")
    p.add_argument("--blobs", required=True, help="comma-separated blob names, e.g. conv1,inception_4e/output")
    p.add_argument("--out", required=True, help="output .npz (written atomically)")
    p.add_argument("--input", metavar="X.npy",
                   help="feed this N×C×H×W float32 array (already preprocessed) as the net's input blob instead of "
                        "images; the net takes its batch size and H×W from the array")
    add_input_args(p)
    p.add_argument("--batch-size", type=int, default=16, help="inputs per forward pass (default %(default)s)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast (CUDA, or a CPU with AVX512-BF16/AMX); blobs saved as float32 (off by "
                        "default)")
    p.add_argument("--root", help="folder that relative paths in list files start from (default: the list's folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def load_array(path):
    array = load_npy(path, "--input")
    if not isinstance(array, np.ndarray) or array.ndim != 4 or array.dtype.kind != "f" or not len(array):
        raise CaffeCamError(f"--input {path}: needs an N×C×H×W float array, got "
                            f"{getattr(array, 'shape', '?')} {getattr(array, 'dtype', '')}")
    return array.astype(np.float32, copy=False)


@main_guard
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise CaffeCamError(f"--batch-size {args.batch_size}: must be at least 1")
    if bool(args.input) == bool(args.inputs):
        raise CaffeCamError("give either INPUT images/folders/lists or --input X.npy (one of the two)")
    if Path(args.out).is_dir():
        raise CaffeCamError(f"--out {args.out}: is a folder; give a file name (e.g. features.npz)")
    blobs = [b.strip() for b in args.blobs.split(",") if b.strip()]
    if not blobs:
        raise CaffeCamError("--blobs: give at least one blob name")
    from caffecam.cam.features import (
        array_batches,
        batch_count,
        check_blobs,
        extract,
        image_batches,
        image_input,
        save_features,
    )
    from caffecam.engine import precision
    from caffecam.engine.net import TEST, Net
    from caffecam.engine.prototxt import read_net
    from caffecam.engine.weights import copy_weights, layers_with_blobs, read_caffemodel
    keep_freed_memory()
    net_param = read_net(args.model)
    net = Net(net_param, TEST, meta=True)  # the shapes, to check the request: nothing allocated yet
    input_blob = image_input(net)
    check_blobs(net, blobs)
    device = "cpu" if args.cpu or not _cuda() else "cuda"
    if args.bf16:
        print(precision.check_bf16(device))
    weights = read_caffemodel(args.weights)
    input_shapes, failures = None, []
    if args.input:
        array = load_array(args.input)
        channels = net.blob_shapes[input_blob][1]
        if array.shape[1] != channels:
            raise CaffeCamError(f"--input {args.input}: has {array.shape[1]} channels; input '{input_blob}' of "
                                f"{args.model} has {channels}")
        batch = min(args.batch_size, len(array))
        input_shapes = {input_blob: (batch,) + array.shape[1:]}
        batches, total = array_batches(array, args.input, args.batch_size), batch_count(len(array), args.batch_size)
    else:
        items = collect_inputs(args.inputs, args.root)
        if not items:
            raise CaffeCamError(f"no images found in {' '.join(args.inputs)}")
        _, _, height, width = net.blob_shapes[input_blob]
        prep = NetInput(height, width, **input_options(args))
        batches = image_batches([it.path for it in items], prep, args.batch_size, failures)
        total = batch_count(len(items), args.batch_size)
    net = Net(net_param, TEST, input_shapes=input_shapes, unfilled=layers_with_blobs(weights))
    report = copy_weights(net, weights, args.weights)
    if report.fresh:
        print(f"warning: {args.weights} has no weights for {', '.join(report.fresh)}; those layers keep their "
              "fillers' values", file=sys.stderr)
    features, names = extract(net, input_blob, batches, blobs, total, device, not args.no_progress, args.bf16)
    save_features(args.out, features, names)
    print(f"wrote {args.out}: {len(names)} input(s); " + ", ".join(f"{b} {features[b].shape}" for b in blobs))
    if failures:
        raise CaffeCamError(f"{len(failures)} input(s) could not be read (listed above) and are not in {args.out}")


def _cuda():
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
