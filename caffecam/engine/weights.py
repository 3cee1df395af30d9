""".caffemodel files: read (current and legacy V1), copy into a Net by layer name, write atomically."""

from dataclasses import dataclass, field

import numpy as np
import torch

from caffecam.engine.prototxt import read_binary, write_binary
from caffecam.errors import CaffeCamError, net_label
from caffecam.proto import caffe_pb2


def blob_to_array(blob):
    """A BlobProto as a float32 array. As Caffe's Blob::FromProto: the legacy num/channels/height/width when any of
    them is set, else `shape`, whose empty or absent dims mean a 0-D blob (PReLU's channel_shared slope)."""
    data = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
    if int(np.prod(shape)) != data.size:
        raise CaffeCamError(f"blob of shape {shape} holds {data.size} values (corrupt file?)")
    return data.reshape(shape)


def array_to_blob(array, blob=None):
    blob = blob if blob is not None else caffe_pb2.BlobProto()
    array = np.asarray(array, dtype=np.float32)  # not ascontiguousarray: it makes a 0-D array 1-D
    blob.shape.dim.extend(array.shape)  # none for 0-D, as Caffe writes it
    blob.data.extend(array.ravel().tolist())
    return blob


def read_caffemodel(path):
    """NetParameter of a .caffemodel; a missing, truncated or foreign file is a one-line error."""
    msg = read_binary(path, caffe_pb2.NetParameter, "caffemodel")
    if not len(msg.layer) and not len(msg.layers):
        raise CaffeCamError(f"{path}: no layers found: not a .caffemodel (or an empty one)")
    return msg


def layers_with_blobs(net_param):
    """Names of the layers a .caffemodel holds blobs for (Net's `unfilled`: copy_weights overwrites all of them or
    raises)."""
    return {lp.name for lp in (*net_param.layers, *net_param.layer) if len(lp.blobs)}


def caffemodel_blobs(net_param):
    """[(layer name, [arrays])] for every layer of the file, blob-less ones included: current `layer`, or legacy
    `layers` (V1, or V0 with name and blobs in its `layer`), read in place rather than through upgrade.py, which
    would copy every blob of a large file twice. Caffe refuses a file with both lists, as here."""
    if len(net_param.layer) and len(net_param.layers):
        raise CaffeCamError(f"{net_label(net_param.name)}: mixes current `layer` and legacy `layers` fields")
    legacy = [v1.layer if v1.HasField("layer") else v1 for v1 in net_param.layers]
    return [(lp.name, [blob_to_array(b) for b in lp.blobs]) for lp in (*legacy, *net_param.layer)]


@dataclass
class CopyReport:
    copied: list = field(default_factory=list)
    fresh: list = field(default_factory=list)
    ignored: list = field(default_factory=list)
    skipped_without_blobs: int = 0

    def lines(self):
        def names(xs):
            return ", ".join(xs) if len(xs) <= 8 else ", ".join(xs[:8]) + f", … ({len(xs)} in all)"

        out = [f"copied {len(self.copied)} layers from the weights"]
        if self.fresh:
            out.append(f"initialised fresh (not in the weights): {names(self.fresh)}")
        if self.ignored:
            out.append(f"ignored (not in this net): {names(self.ignored)}")
        if self.skipped_without_blobs:
            out.append(f"skipped {self.skipped_without_blobs} source layers without weights (split, relu, data …)")
        return out


def copy_weights(net, source, path="weights"):
    """Copy blobs into `net` by exact layer name, as Caffe's fine-tuning does; returns a CopyReport.

    `source` is a NetParameter (from read_caffemodel). Legacy V1 blobs are 4-D (a bias is 1×1×1×N, an
    InnerProduct weight 1×1×N×K): those are matched against the shape padded with leading 1s and reshaped.
    """
    report = CopyReport()
    seen = set()
    for name, arrays in caffemodel_blobs(source):
        if not arrays:
            report.skipped_without_blobs += 1
            continue
        layer = net.layer_by_name.get(name)
        if layer is None:
            report.ignored.append(name)
            continue
        if len(arrays) != len(layer.blobs):
            raise CaffeCamError(f"{path}: layer '{name}' has {len(arrays)} blobs in the weights but {len(layer.blobs)} "
                                "in the net; rename the layer in the prototxt to train it from scratch")
        for i, (array, param) in enumerate(zip(arrays, layer.blobs)):
            target = tuple(param.shape)
            # Caffe's legacy rule: 4-D dims equal the net's shape left-padded with 1s (bias 1×1×1×N, IP 1×1×N×K).
            legacy = array.ndim == 4 and len(target) < 4 and array.shape == (1,) * (4 - len(target)) + target
            if array.shape != target and not legacy:
                raise CaffeCamError(f"{path}: layer '{name}' blob {i}: shape {tuple(array.shape)} in the weights, "
                                    f"{target} in the net; rename the layer in the prototxt to learn it afresh")
            value = torch.from_numpy(array.reshape(target))
            with torch.no_grad():
                if param.device.type == "cpu" and param.dtype == value.dtype and param.is_contiguous():
                    # Adopt the array blob_to_array just decoded (ours alone): no second copy, and none of the
                    # parameter's fresh pages to fault in (GoogLeNet: 0.1 s of cam.py's start).
                    param.data = value
                else:  # on a device, or channels_last: keep the parameter's placement and layout
                    param.copy_(value)
        report.copied.append(name)
        seen.add(name)
    report.fresh = [name for name, layer in net.layer_by_name.items() if len(layer.blobs) and name not in seen]
    return report


def load_weights(net, paths, log=print):
    """Copy each comma-separated .caffemodel into `net` in turn (later files win), logging each report."""
    for path in [p for p in str(paths).split(",") if p]:
        report = copy_weights(net, read_caffemodel(path), path)
        for line in report.lines():
            log(f"{path}: {line}")


def net_to_proto(net):
    """A NetParameter in the current format with every layer of `net` and the blobs of those that learn."""
    out = caffe_pb2.NetParameter(name=net.name)
    for lp, layer in zip(net.layer_params, net.layers):
        entry = out.layer.add()
        entry.CopyFrom(lp)
        del entry.blobs[:]
        for param in layer.blobs:
            array_to_blob(param.detach().float().cpu().numpy(), entry.blobs.add())
    return out


def save_caffemodel(net, path):
    """Write `net`'s weights as a current-format .caffemodel (atomically: temp file, then rename)."""
    try:
        write_binary(path, net_to_proto(net))
    except OSError as exc:
        raise CaffeCamError(f"{path}: cannot write ({exc.strerror or exc})") from None
