"""A whole image as a deploy net's input, with the preprocessing options people run Caffe models with.

OpenCV reads B,G,R uint8 pixels in [0, 255]. The steps, in pycaffe's Transformer order (caffe/io.py):
  1. resize to the net's input size (bilinear),
  2. channel order: the net's (BGR, Caffe's own; RGB reverses the channels),
  3. raw scale: pycaffe's images are floats in [0, 1] times raw_scale; 255 (the default) keeps the [0, 255] pixels
     exactly as Caffe's data layers see them, another value r gives float32(pixel / 255) · r as pycaffe computes,
  4. minus the mean: one value, one per channel (in the net's channel order), or a mean image (a Caffe
     mean.binaryproto, C×H×W in the net's order) centre-cropped to the input size, as Caffe's TEST-phase crop takes
     the mean at the image's own offset (data_transformer.cpp: mean[(c·H + h_off + h)·W + w_off + w]),
  5. times scale (Caffe's transform_param.scale, pycaffe's input_scale; MobileNet's 0.017).
"""

import cv2
import numpy as np

from caffecam.data.datum import read_mean_binaryproto
from caffecam.errors import CaffeCamError

DEFAULT_MEAN = (104.0, 117.0, 123.0)  # B, G, R: the ImageNet mean of BVLC's models
CHANNEL_ORDERS = ("BGR", "RGB")


def parse_mean(text):
    """'104,117,123' (three channels) or one value -> tuple of floats."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 3):
        raise CaffeCamError(f"--mean {text!r}: give B,G,R values (e.g. 104,117,123) or a single value")
    return values


class NetInput:
    """NetInput(height, width, mean, scale, raw_scale, channel_order)(image) -> H×W×C float32 in the net's order.

    `mean`: values (1 or C) or a C×H'×W' mean image at least the input's size (a mean file)."""

    def __init__(self, height, width, mean=DEFAULT_MEAN, scale=1.0, raw_scale=255.0, channel_order="BGR",
                 where="mean file"):
        if channel_order not in CHANNEL_ORDERS:
            raise CaffeCamError(f"--channel-order {channel_order}: give BGR or RGB")
        if not np.isfinite(scale) or not np.isfinite(raw_scale) or raw_scale <= 0:
            raise CaffeCamError(f"--scale {scale:g} / --raw-scale {raw_scale:g}: must be finite (raw scale > 0)")
        self.height, self.width = int(height), int(width)
        self.rgb = channel_order == "RGB"
        self.scale, self.raw_scale = np.float32(scale), np.float32(raw_scale)
        mean = np.asarray(mean, np.float32)
        if mean.ndim == 3:
            c, h, w = mean.shape
            if c != 3 or h < self.height or w < self.width:
                raise CaffeCamError(f"{where}: the mean image is {c}×{h}×{w}, the net's input 3×{self.height}×"
                                    f"{self.width}: it needs 3 channels and at least the input's size (or give "
                                    "--mean B,G,R, e.g. the mean image's per-channel averages)")
            top, left = (h - self.height) // 2, (w - self.width) // 2
            mean = mean[:, top:top + self.height, left:left + self.width].transpose(1, 2, 0)
        elif mean.size not in (1, 3):
            raise CaffeCamError(f"--mean: give one value or three (one per channel), got {mean.size}")
        self.mean = np.ascontiguousarray(mean.reshape(-1) if mean.ndim <= 1 else mean)

    def __call__(self, image):
        """H×W×3 uint8 BGR -> the net's input, H'×W'×3 float32 (channels last; .transpose(2, 0, 1) for C×H×W)."""
        if image.shape[:2] != (self.height, self.width):
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        if self.rgb:
            image = image[:, :, ::-1]
        if self.raw_scale == 255:
            x = image.astype(np.float32)
        else:  # pycaffe: caffe.io.load_image's [0, 1] floats, cast to float32, times raw_scale in float32
            x = (image / 255.0).astype(np.float32)
            x *= self.raw_scale
        x -= self.mean
        if self.scale != 1:
            x *= self.scale
        return x


def add_input_args(p, mean_default=DEFAULT_MEAN):
    """The preprocessing options of an argparse parser (read back with input_options)."""
    mean = p.add_mutually_exclusive_group()
    mean.add_argument("--mean", "--mean-value", dest="mean", default=",".join(f"{v:g}" for v in mean_default),
                      help="mean subtracted per channel, in the net's channel order (B,G,R unless --channel-order "
                           "RGB), or one value for all (default %(default)s)")
    mean.add_argument("--mean-file", metavar="MEAN.binaryproto",
                      help="a mean image instead of --mean, centre-cropped to the input size: Caffe's .binaryproto "
                           "(e.g. Places365's) or pycaffe's C×H×W .npy (ilsvrc_2012_mean.npy)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply (pixel − mean) by this (Caffe's transform_param.scale, e.g. MobileNet's 0.017; "
                        "default 1)")
    p.add_argument("--raw-scale", type=float, default=255.0,
                   help="pycaffe's raw_scale: pixels in [0, 1] times this before the mean (default 255: [0, 255])")
    p.add_argument("--channel-order", type=str.upper, choices=CHANNEL_ORDERS, default="BGR",
                   help="channel order the net was trained with (default BGR, Caffe's; RGB for nets converted from "
                        "RGB frameworks)")


def load_npy(path, option):
    """A .npy array a user names with `option`, read without unpickling (an object array is refused)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CaffeCamError(f"{option} {path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise CaffeCamError(f"{option} {path}: not a .npy array ({exc})") from None


def read_mean_file(path):
    """A mean image, C×H×W float32: Caffe's mean.binaryproto, or pycaffe's .npy (e.g. ilsvrc_2012_mean.npy)."""
    if str(path).lower().endswith(".npy"):
        mean = load_npy(path, "--mean-file")
        if mean.ndim != 3 or mean.dtype.kind not in "fiu":
            raise CaffeCamError(f"--mean-file {path}: needs a C×H×W array of numbers, got {mean.shape} {mean.dtype}")
        return mean.astype(np.float32)
    return read_mean_binaryproto(path)


def input_options(args):
    """NetInput's keyword arguments from the options of add_input_args (reads the mean file)."""
    mean_file = getattr(args, "mean_file", None)
    mean = read_mean_file(mean_file) if mean_file else parse_mean(args.mean)
    return {"mean": mean, "scale": args.scale, "raw_scale": args.raw_scale, "channel_order": args.channel_order,
            "where": f"--mean-file {mean_file}" if mean_file else "--mean"}
