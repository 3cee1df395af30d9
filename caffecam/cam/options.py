"""The command-line options of scripts/cam.py and scripts/eval_loc.py, and the method names, in a module that
imports neither torch nor the engine: the scripts parse their arguments (and answer --help) before loading them."""

import argparse

from caffecam.cam.localize import DEFAULT_BOX_THRESHOLD
from caffecam.data.images import DEFAULT_MAX_PIXELS
from caffecam.data.net_input import add_input_args
from caffecam.errors import CaffeCamError

TITLES = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM",
          "layercam": "Layer-CAM", "scorecam": "Score-CAM"}
METHODS = tuple(TITLES)


def add_model_args(p):
    """The model, preprocessing, batching and box options of an argparse parser."""
    p.add_argument("--model", help="deploy prototxt of a classifier (CAM needs global average pooling + a linear "
                                   "classifier; the gradient methods take any)")
    p.add_argument("--weights", help=".caffemodel with the trained weights")
    p.add_argument("--labels", help="class names: `id name` per line (class_labels.csv), `name id` (Places365's "
                   "categories_places365.txt) or one name per line (synset_words.txt); without it classes are "
                   "shown by id")
    add_input_args(p)
    p.add_argument("--method", choices=METHODS,
                   help="cam: the classifier's weights on the maps its global average pooling reads; gradcam, "
                        "gradcam++, xgradcam, layercam, scorecam: the gradient family on --layer, for any classifier "
                        "(default: cam when the net ends in global average pooling and a linear classifier, else "
                        "gradcam, with a line saying why)")
    p.add_argument("--layer", metavar="BLOB",
                   help="blob the gradient methods explain (default: the last spatial blob before the classifier, "
                        "e.g. conv5 of AlexNet, conv5_3 of VGG16, with the value its in-place ReLU left in it)")
    p.add_argument("--feature-blob", help="CAM: blob holding the feature maps (default: found from the graph)")
    p.add_argument("--fc-layer", help="CAM: classifier layer (default: the InnerProduct or 1×1 Convolution after the "
                                      "global average pooling)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default %(default)s)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    p.add_argument("--tf32", action="store_true",
                   help="let CUDA round float32 convolutions to TF32 (off by default: about 1e-3 times the error)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on; faster on GPUs and on this CPU)")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast (CUDA, or a CPU with AVX512-BF16/AMX): faster, maps and probabilities "
                        "within about 1e-2 (off by default)")
    p.add_argument("--workers", type=int, default=None, help="threads decoding and writing images (default: cores+1)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="reject images larger than this many pixels (default %(default)s)")
    p.add_argument("--box-threshold", type=float, default=DEFAULT_BOX_THRESHOLD,
                   help="box = largest region above this fraction of the map's maximum (default %(default)s)")
    p.add_argument("--thresholds", help="box thresholds to score: a value, a list a,b,c or a sweep start:stop:step "
                                        "(e.g. 0.1:0.5:0.05); --box-threshold is always included")
    p.add_argument("--root", help="folder that relative paths in list files and boxes.csv start from "
                                  "(default: the folder of each file)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_model_args(args, hint=""):
    """One-line errors for the options of add_model_args; `hint` is appended to the missing-model message."""
    if args.model is None or args.weights is None:
        raise CaffeCamError(f"give --model DEPLOY.prototxt and --weights W.caffemodel{hint}")
    if args.batch_size < 1:
        raise CaffeCamError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise CaffeCamError(f"--workers {args.workers}: must be at least 1 (leave it out for cores+1)")
    if not 0.0 <= args.box_threshold <= 1.0:
        raise CaffeCamError(f"--box-threshold {args.box_threshold}: must lie in [0, 1]")
    if args.max_pixels < 1:
        raise CaffeCamError(f"--max-pixels {args.max_pixels}: must be positive")
