"""Write a CAM net built from any Caffe backbone: the base net up to --cut (layer names and parameters untouched, so
its ImageNet .caffemodel copies by name), then CAM_conv (3x3, pad 1), CAM_relu (or the --head stack), CAM_pool (global
average), CAM_fc_<N> and the loss and top-1/top-5 accuracy layers, as train_val, deploy and solver prototxts."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import dataclasses

from google.protobuf import text_format

from caffecam.atomic import atomic_write_bytes
from caffecam.engine import netparam
from caffecam.engine.prototxt import read_net
from caffecam.errors import CaffeCamError, main_guard
from caffecam.nets import cam_surgery
from caffecam.nets.builders import GOOGLENET_MEAN, image_data_layers, lmdb_data_layers
from caffecam.proto import caffe_pb2

EXAMPLE = """\
example (rebuilds prototxt/googlenet_cam_* from BVLC GoogLeNet):
  scripts/make_cam_net.py --base tests/zoo/bvlc_googlenet.prototxt --cut inception_4e/output --classes 14 \\
      --train-list data/train.txt --val-list data/val.txt --root-folder data/mpii/images/ \\
      --out prototxt --prefix googlenet_cam
CAM paper nets: VGG16 --cut conv5_3 (after relu5_3, pool5 dropped), ResNet-50 --cut res5c, and the CAM authors'
AlexNet-CAM (deploy_alexnetplusCAM_imagenet) from CaffeNet:
  scripts/make_cam_net.py --base tests/zoo/bvlc_reference_caffenet.prototxt --cut conv4 --classes 1000 \\
      --head conv5:384:g2,pool5:max3s1,conv6:512:g2,conv7:512:g2 --pool-name pool8_global --dropout 0.5 \\
      --fc-name fc9 --lmdb train_lmdb val_lmdb --out alexnet_cam"""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", required=True, help="the backbone: a deploy or train_val prototxt (V1 files too)")
    p.add_argument("--cut", required=True,
                   help="blob (or layer) to put the CAM head on; the layers it depends on are kept, in-place layers "
                        "writing it (relu5_3 on conv5_3) included")
    p.add_argument("--classes", type=int, required=True, help="number of classes N (CAM_fc_<N>)")
    p.add_argument("--out", required=True, help="folder for <prefix>_train_val/_deploy/_solver.prototxt")
    p.add_argument("--prefix", default="cam", help="file name prefix (default %(default)s)")
    p.add_argument("--name", help="net name (default: the base's name + '-CAM')")
    head = p.add_argument_group("CAM head")
    head.add_argument("--conv-outputs", type=int, help="CAM_conv outputs (default 1024)")
    head.add_argument("--group", type=int, help="CAM_conv group (default 2, the seed's)")
    head.add_argument("--head", metavar="SPEC",
                      help=f"instead of CAM_conv+CAM_relu: {cam_surgery.HEAD_SYNTAX};\neach convolution gets a ReLU "
                           "named with 'conv' -> 'relu' (conv5 -> relu5) and CAM_conv's fillers;\n"
                           "e.g. the CAM authors' AlexNet-CAM: conv5:384:g2,pool5:max3s1,conv6:512:g2,conv7:512:g2")
    head.add_argument("--pool-name", default="CAM_pool", help="the global average pool's name (default %(default)s)")
    head.add_argument("--global-pool", action="store_true",
                      help="CAM_pool with global_pooling (any input size) instead of AVE with a kernel the size of "
                           "the last convolution's map (the seed's 14/14)")
    head.add_argument("--dropout", type=float, help="a Dropout of this ratio on CAM_pool (the CAM authors' "
                                                     "VGG16-CAM has 0.5; the seed's net none)")
    head.add_argument("--fc-name", help="classifier name (default CAM_fc_<N>; the CAM authors' nets use CAM_fc)")
    head.add_argument("--conv-bias", type=float, default=1.0,
                      help="CAM_conv's constant bias filler (default %(default)s, the seed's)")
    head.add_argument("--input-size", type=int, help="deploy input height and width (default: the base's)")
    head.add_argument("--deploy-batch", type=int, default=1, help="deploy input batch (default %(default)s)")
    data = p.add_argument_group("train_val data (default: the base's own data layers)")
    data.add_argument("--train-list", help="ImageData list (`path label`) for TRAIN")
    data.add_argument("--val-list", help="ImageData list for TEST")
    data.add_argument("--root-folder", default="", help="ImageData root_folder")
    data.add_argument("--new-size", type=int, default=256, help="ImageData resize before the crop (default 256)")
    data.add_argument("--lmdb", nargs=2, metavar=("TRAIN_DB", "VAL_DB"), help="Data layers reading LMDBs instead")
    data.add_argument("--crop-size", type=int, help="crop (default: the deploy input size)")
    data.add_argument("--batch", type=int, default=32, help="TRAIN batch (default %(default)s)")
    data.add_argument("--test-batch", type=int, default=32, help="TEST batch (default %(default)s)")
    data.add_argument("--mean", default=",".join(map(str, GOOGLENET_MEAN)), help="B,G,R mean (default %(default)s)")
    sol = p.add_argument_group("solver (default: the seed's)")
    sol.add_argument("--base-lr", type=float, default=0.0005)
    sol.add_argument("--stepsize", type=int, default=2000)
    sol.add_argument("--max-iter", type=int, default=3000)
    sol.add_argument("--test-iter", type=int, default=20)
    sol.add_argument("--test-interval", type=int, default=500)
    sol.add_argument("--snapshot", type=int, default=1000)
    sol.add_argument("--snapshot-prefix", help="default snapshots/<prefix>")
    sol.add_argument("--solver-mode", choices=("GPU", "CPU"), default="GPU")
    return p.parse_args(argv)


if __name__ == "__main__":  # --help and option errors answer before torch loads (over a second)
    parse_args(sys.argv[1:])

from caffecam.engine.net import TEST, TRAIN, Net


def load_base(path):
    """The base net with current `layer` messages: V1 layers upgraded, a legacy `input:` header as an Input layer."""
    net = read_net(path)
    out = caffe_pb2.NetParameter(name=net.name)
    for name, shape in netparam.legacy_inputs(net):
        lp = out.layer.add(name=name, type="Input")
        lp.top.append(name)
        lp.input_param.shape.add().dim.extend(shape)
    out.layer.extend(netparam.current_layers(net))
    return out


def included(lp, phase):
    return netparam.layer_included(lp, caffe_pb2.NetState(phase=phase))


def data_layers(args, crop):
    if args.lmdb and (args.train_list or args.val_list):
        raise CaffeCamError("give either --train-list/--val-list or --lmdb, not both")
    if bool(args.train_list) != bool(args.val_list):
        raise CaffeCamError("--train-list and --val-list go together")
    try:
        mean = tuple(float(v) for v in args.mean.split(","))
    except ValueError:
        mean = ()
    if len(mean) not in (1, 3):
        raise CaffeCamError(f"--mean {args.mean}: give B,G,R values, e.g. 104,117,123")
    if args.lmdb:
        return lmdb_data_layers(*args.lmdb, crop, args.batch, args.test_batch, mean=mean)
    if args.train_list:
        return image_data_layers(args.train_list, args.val_list, args.root_folder, args.new_size, crop, args.batch,
                                 args.test_batch, mean=mean)
    return None


def make_head(args):
    """The Head of the options: --head's stack, or the seed's CAM_conv of --conv-outputs and --group."""
    if args.head is not None and (args.conv_outputs is not None or args.group is not None):
        raise CaffeCamError("--conv-outputs and --group size the seed's CAM_conv; with --head give each "
                            "convolution's outputs and group in its item (conv5:384:g2)")
    stack = cam_surgery.parse_head(args.head) if args.head is not None else ()
    return cam_surgery.Head(args.classes, None, 1024 if args.conv_outputs is None else args.conv_outputs,
                            2 if args.group is None else args.group, args.fc_name, args.dropout, args.conv_bias,
                            stack, args.pool_name)


def head_map_size(probe, trunk, head):
    """The height and width of the map the head's last convolution gives (CAM_pool's kernel): the cut map's for the
    seed's head; a pooling in a --head stack shrinks it (Caffe's ceil((H + 2 pad - K) / S) + 1)."""
    stack, end = cam_surgery.head_stack(trunk.blob, head)
    net = caffe_pb2.NetParameter(name=probe.name)
    net.layer.extend(list(probe.layer) + stack)
    shapes = Net(net, TEST, meta=True).blob_shapes
    for item in head.items():
        n, c, h, w = shapes[item.name]
        if h * w < 2:
            raise CaffeCamError(f"--head: '{item.name}' leaves a {h}×{w} map; a class activation map needs more "
                                "than one position: use a smaller pooling kernel or cut earlier")
    return tuple(shapes[end][2:])


def build(args):
    """(train_val, deploy, solver) messages and a one-line description of the cut."""
    base = load_base(args.base)
    trunk = cam_surgery.cut(base, args.cut, included, source=args.base)
    input_layer = cam_surgery.input_for_deploy(trunk, args.deploy_batch, args.input_size)
    probe = caffe_pb2.NetParameter(name=base.name)
    probe.layer.extend([input_layer] + trunk.deploy)
    shape = Net(probe, TEST, meta=True).blob_shapes[trunk.blob]
    cam_surgery.check_spatial(trunk.blob, shape)
    head = make_head(args)
    cam_surgery.check_head(head, shape[1], trunk)
    map_size = head_map_size(probe, trunk, head)
    head = dataclasses.replace(head, map_size=None if args.global_pool else map_size)
    name = args.name or f"{base.name}-CAM"
    crop = args.crop_size or input_layer.input_param.shape[0].dim[2]
    train_val = cam_surgery.train_val(trunk, head, name, data_layers(args, crop))
    deploy = cam_surgery.deploy(trunk, head, name, input_layer)
    for net, phase in ((train_val, TRAIN), (train_val, TEST), (deploy, TEST)):
        Net(net, phase, meta=True)  # every layer connects and its shapes work out
    out = args.out.rstrip("/")
    solver = cam_surgery.cam_solver(f"{out}/{args.prefix}_train_val.prototxt",
                                    args.snapshot_prefix or f"snapshots/{args.prefix}", args.base_lr, args.stepsize,
                                    args.max_iter, args.test_iter, args.test_interval, args.snapshot, args.solver_mode)
    dims = "×".join(map(str, shape[1:]))
    added = ", ".join(f"{i.name} ({i.outputs}, group {i.group})" if isinstance(i, cam_surgery.HeadConv) else
                      f"{i.name} ({i.method} {i.kernel}/{i.stride})" for i in head.items())
    what = (f"kept {len(trunk.layers)} of {len(base.layer)} layers of {args.base} up to '{trunk.blob}' ({dims}); "
            f"added {added}, {head.pool_name}, {head.fc()} ({args.classes} classes)")
    return train_val, deploy, solver, what


@main_guard
def main(argv=None):
    args = parse_args(argv)
    if min(args.deploy_batch, args.batch, args.test_batch, args.new_size) < 1 or (args.input_size or 1) < 1:
        raise CaffeCamError("batches and sizes must be positive")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CaffeCamError(f"--out {args.out}: is a file; give a folder")
    train_val, deploy, solver, what = build(args)
    header = f"# Generated by scripts/make_cam_net.py from {args.base}, cut at {args.cut}.\n"
    print(what)
    for kind, msg in (("train_val", train_val), ("deploy", deploy), ("solver", solver)):
        path = Path(args.out) / f"{args.prefix}_{kind}.prototxt"
        try:
            atomic_write_bytes(path, (header + text_format.MessageToString(msg)).encode())
        except OSError as exc:
            raise CaffeCamError(f"{path}: cannot write ({exc.strerror})") from None
        print(path)


if __name__ == "__main__":
    main()
