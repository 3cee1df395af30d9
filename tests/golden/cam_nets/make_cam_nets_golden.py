"""Record real BVLC Caffe's blob and parameter shapes of the CAM deploy nets scripts/make_cam_net.py builds from the
zoo backbones, for tests/nets/test_cam_surgery.py: that Caffe accepts what the surgery writes, and sets it up with the
shapes caffecam's engine gives.

Run (needs real Caffe with pycaffe, and the project's .venv to run make_cam_net.py; the tests need no Caffe):

    source /work/caffe-ref/env.sh
    $CAFFE_PYTHON tests/golden/cam_nets/make_cam_nets_golden.py

Writes tests/golden/cam_nets/cam_nets.json: {case: {base, cut, classes, [args: more make_cam_net options],
blob_shapes [[blob, shape]] in Caffe's order (not the Split tops Caffe inserts), param_shapes [[layer, [shape of each
blob]]]}}. Must not import torch or caffecam.
"""

import json
import subprocess
import tempfile
from pathlib import Path

import caffe

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
# case -> (base in tests/zoo/, cut[, more options]): one backbone of each family the CAM paper and issue 13 name, and
# the CAM authors' AlexNet-CAM head (a --head stack)
CASES = {
    "googlenet": ("bvlc_googlenet", "inception_4e/output"),
    "vgg16": ("places365_vgg16", "conv5_3"),
    "caffenet": ("bvlc_reference_caffenet", "conv5"),
    "resnet50": ("resnet50", "res5c"),
    "mobilenet_v1": ("mobilenet_v1", "conv6/sep"),
    "squeezenet_v1.1": ("squeezenet_v1.1", "fire9/concat"),
    "alexnet_cam": ("bvlc_reference_caffenet", "conv4", ["--head", "conv5:384:g2,pool5:max3s1,conv6:512:g2,"
                                                         "conv7:512:g2", "--pool-name", "pool8_global", "--dropout",
                                                         "0.5"]),
}
CLASSES = 7


def main():
    caffe.set_mode_cpu()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, (base, cut, *more) in CASES.items():
            args = more[0] if more else []
            folder = Path(tmp) / case
            subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "scripts/make_cam_net.py"), "--base",
                            f"tests/zoo/{base}.prototxt", "--cut", cut, "--classes", str(CLASSES), "--out",
                            str(folder), *args, "--lmdb", "train_lmdb", "val_lmdb"], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
            net = caffe.Net(str(folder / "cam_deploy.prototxt"), caffe.TEST)
            out[case] = {
                "base": base, "cut": cut, "classes": CLASSES, **({"args": args} if args else {}),
                "blob_shapes": [[b, list(v.data.shape)] for b, v in net.blobs.items() if "_split_" not in b],
                "param_shapes": [[n, [list(p.data.shape) for p in ps]] for n, ps in net.params.items()],
            }
            print(case, len(out[case]["blob_shapes"]), "blobs")
    lines = [f"{json.dumps(case)}: {json.dumps(rec, separators=(',', ':'))}" for case, rec in out.items()]
    (HERE / "cam_nets.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    main()
