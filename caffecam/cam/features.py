"""Caffe's extract_features for this toolkit: named blobs of a net over many inputs, saved as one .npz.

A blob's value is what real Caffe holds after the forward pass: the last layer writing it wins, so a blob written
in place by conv -> BatchNorm -> Scale -> ReLU holds the ReLU's output (Net.forward keeps the latest value of each
name). The net runs only up to the last layer writing a requested blob; the layers after it cannot change it.
"""

import difflib
import io
import math
import sys

import numpy as np
import torch
from tqdm import tqdm

from caffecam.atomic import atomic_write_bytes
from caffecam.data.images import ImageLoadError, load_image
from caffecam.engine import precision
from caffecam.engine.fold import fold_batchnorm
from caffecam.errors import CaffeCamError, net_label


def check_blobs(net, names):
    """Every requested blob exists in the net, else one line naming the nearest blob names."""
    known = list(net.blob_shapes)
    for name in names:
        if name not in net.blob_shapes:
            near = difflib.get_close_matches(name, known, n=3, cutoff=0.0)
            raise CaffeCamError(f"{net_label(net.name)} has no blob '{name}'; nearest: {', '.join(near)}")
        if name == "names":
            raise CaffeCamError("a blob named 'names' would clash with the list of inputs in the .npz; rename it")


def image_input(net):
    """The net's image input blob: its only 4-D input."""
    images = [b for b in net.input_blobs if len(net.blob_shapes[b]) == 4]
    if len(images) != 1:
        raise CaffeCamError(f"{net_label(net.name)}: needs exactly one 4-D input blob to feed, has "
                            f"{', '.join(images) or 'none'} (inputs: {', '.join(net.input_blobs) or 'none'})")
    return images[0]


def image_batches(paths, preprocess, batch_size, failures):
    """Batches (names, N×C×H×W float32) of images; an image that fails is appended to `failures` and skipped.
    `preprocess`: image -> H×W×C float32 (a data.net_input.NetInput)."""
    names, batch = [], []
    for path in paths:
        try:
            batch.append(preprocess(load_image(path)).transpose(2, 0, 1))
            names.append(str(path))
        except ImageLoadError as exc:
            failures.append(str(exc))
            tqdm.write(str(exc), file=sys.stderr)
        if len(batch) == batch_size:
            yield names, np.stack(batch)
            names, batch = [], []
    if batch:
        yield names, np.stack(batch)


def array_batches(array, label, batch_size):
    """Batches (names, rows) of an N×C×H×W array; row i is named label[i]."""
    for start in range(0, len(array), batch_size):
        rows = array[start:start + batch_size]
        yield [f"{label}[{i}]" for i in range(start, start + len(rows))], np.ascontiguousarray(rows, np.float32)


def last_writer(net, blobs):
    """Name of the last layer writing any of `blobs` (None when they are all net inputs)."""
    last = None
    for lp in net.layer_params:
        if any(t in blobs for t in lp.top):
            last = lp.name
    return last


def extract(net, input_blob, batches, blobs, total=None, device="cpu", progress=True, bf16=False):
    """Run `batches` ((names, array) pairs) through `net`, keeping `blobs` (as float32, also with `bf16`, bfloat16
    autocast). -> ({blob: array}, names)."""
    check_blobs(net, blobs)
    end = last_writer(net, set(blobs))
    others = [b for b in net.input_blobs if b != input_blob]
    kept, names = {b: [] for b in blobs}, []
    net.eval().to(device)
    fold_batchnorm(net, keep=blobs)  # BatchNorm/Scale inside their convolutions, but for the blobs asked for
    with torch.inference_mode():
        for batch_names, x in tqdm(batches, total=total, unit="batch", desc="features", disable=None if progress
                                   else True):
            feeds = {input_blob: torch.from_numpy(x).to(device)}
            for b in others:  # e.g. a `label` input of a deploy net: zeros, as the CAM tools feed it
                feeds[b] = torch.zeros((len(x),) + tuple(net.blob_shapes[b][1:]), device=device)
            with precision.autocast(device, bf16):
                out = net(feeds, end=end) if end is not None else feeds
            for b in blobs:
                kept[b].append(out[b].detach().float().cpu().numpy())
            names += batch_names
    if not names:
        raise CaffeCamError("no input could be read; nothing to write")
    return {b: np.concatenate(v) for b, v in kept.items()}, names


def save_features(path, features, names):
    """One .npz: an array per blob (keys = blob names, slashes included) and `names`; written atomically."""
    buf = io.BytesIO()
    np.savez(buf, names=np.asarray(names, dtype=str), **features)
    atomic_write_bytes(path, buf.getvalue())


def batch_count(n, batch_size):
    return math.ceil(n / batch_size)
