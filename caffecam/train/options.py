"""scripts/train.py's options, in a module that imports neither torch nor the engine, so that --help and option
errors answer at once."""

import argparse

from caffecam.data.images import DEFAULT_MAX_PIXELS


def parse_args(argv, doc=None):
    """The options of scripts/train.py; `doc`: its docstring, whose text after the first two lines is the epilog."""
    ap = argparse.ArgumentParser(
        description="Train a net from a Caffe solver prototxt (mirrors `caffe train`). The log goes to stderr and "
                    "to <snapshot_prefix folder>/train.log; snapshots to <snapshot_prefix>_iter_N.caffemodel and "
                    ".solverstate. Ctrl-C or SIGTERM: finish the iteration, snapshot, stop.",
        formatter_class=argparse.RawDescriptionHelpFormatter, prog="train.py",
        epilog=doc.split("\n", 2)[2] if doc else None)
    ap.add_argument("--solver", required=True, help="solver prototxt (paths in it are relative to the working "
                                                    "directory, as in Caffe)")
    ap.add_argument("--weights", help="fine-tune from these .caffemodel files (comma-separated; copied by layer name)")
    ap.add_argument("--snapshot", help="resume from this .solverstate")
    ap.add_argument("--gpu", help="GPU id (0), several ids (0,1: one process each) or 'all', numbered as "
                                  "CUDA_VISIBLE_DEVICES shows them; default: solver_mode")
    ap.add_argument("--cpu", action="store_true", help="train on the CPU whatever solver_mode says")
    ap.add_argument("--workers", type=int, default=None,
                    help="data loading processes per training process (default: from the CPU count)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="channels_last memory format (default: on for the CPU, where it is faster and equal to "
                         "float noise; off on CUDA unless asked for)")
    ap.add_argument("--bf16", action="store_true",
                    help="bfloat16 autocast, on CUDA or on a CPU with native bfloat16 (AVX512-BF16/AMX); weights "
                         "and updates stay float32 (off by default: fidelity first)")
    ap.add_argument("--tf32", action="store_true",
                    help="let CUDA round float32 convolutions and matrix products to TF32 (off by default: about "
                         "1e-3 times the float32 error)")
    ap.add_argument("--log", help="training log file (appended; default <snapshot_prefix folder>/train.log)")
    ap.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                    help="refuse images with more pixels, read from their header before decoding (default "
                         f"{DEFAULT_MAX_PIXELS:,}): a decompression bomb in a list stops training with one line")
    return ap.parse_args(argv)
