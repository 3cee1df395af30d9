"""Record real BVLC Caffe's gradient of the top class score with respect to an in-place ReLU's blob, for
tests/cam/test_gradients_caffe.py.

Run (needs real Caffe with pycaffe; the tests need neither):

    source /work/caffe-ref/env.sh
    $CAFFE_PYTHON tests/golden/gradcam/make_gradcam_golden.py

net.prototxt (force_backward: true) with tests/golden/zoo_weights.py's formula weights, input
50 · zoo_weights.net_input. After the forward the diff of `fc` is set to 1 at each image's top class and Caffe runs
backward from `fc` down to `pool`, the layer that reads `conv2`: so `conv2`'s diff is ∂y_c/∂A for A the blob's value
after the in-place `relu2`, before relu2's backward overwrites that shared diff with the gradient of its input.
Writes gradcam.npz: input, classes (argmax of fc), fc, conv2 (data) and conv2_diff. Must not import torch or caffecam.
"""

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import caffe  # noqa: E402
import zoo_weights as zw  # noqa: E402


def main():
    caffe.set_mode_cpu()
    net = caffe.Net(str(HERE / "net.prototxt"), caffe.TEST)
    types = dict(zip(net._layer_names, [layer.type for layer in net.layers]))
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            blob.data[...] = zw.blob_values(types[name], name, i, blob.data.shape)
    x = 50 * zw.net_input(net.blobs["data"].data.shape)
    net.blobs["data"].data[...] = x
    net.forward()
    fc = net.blobs["fc"].data.copy()
    classes = fc.argmax(1)
    for blob in net.blobs.values():
        blob.diff[...] = 0
    net.blobs["fc"].diff[np.arange(len(classes)), classes] = 1
    net.backward(start="fc", end="pool")
    np.savez(HERE / "gradcam.npz", input=x, classes=classes, fc=fc, conv2=net.blobs["conv2"].data.copy(),
             conv2_diff=net.blobs["conv2"].diff.copy())
    print(f"classes {classes.tolist()}, conv2 diff range {net.blobs['conv2'].diff.min():.3g} "
          f"{net.blobs['conv2'].diff.max():.3g}")


if __name__ == "__main__":
    main()
