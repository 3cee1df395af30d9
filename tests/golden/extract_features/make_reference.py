"""Record real Caffe's blob values on small nets, for tests/scripts/test_extract_features.py.

Run where `import caffe` works (BVLC master with pycaffe; here: source /work/caffe-ref/env.sh):

    $CAFFE_PYTHON tests/golden/extract_features/make_reference.py

For each net NAME below it writes into this folder: NAME.prototxt (the deploy net), NAME.caffemodel (seeded weights,
saved by Caffe), NAME_input.npy (the seeded N×C×H×W input) and NAME_blobs.npz (every blob's value after Caffe's
forward pass, keys = blob names). The tests need neither Caffe nor this script.
"""

from pathlib import Path

import caffe
import numpy as np

HERE = Path(__file__).resolve().parent

NETS = {
    # Families mixed: Input, DummyData; Convolution, Pooling, LRN; ReLU in place on conv1; Concat, Eltwise,
    # InnerProduct, Softmax, Split (inserted by Caffe for `pool1`); Dropout in place (identity at TEST).
    "mixed": ((2, 3, 11, 13), """name: "mixed"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 11 dim: 13 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3
  pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3
  stride: 2 } }
layer { name: "conv2/a" type: "Convolution" bottom: "pool1" top: "conv2/a" convolution_param { num_output: 3
  kernel_size: 1 } }
layer { name: "conv2/b" type: "Convolution" bottom: "pool1" top: "conv2/b" convolution_param { num_output: 3
  kernel_size: 3 pad: 1 } }
layer { name: "cat" type: "Concat" bottom: "conv2/a" bottom: "conv2/b" top: "cat" }
layer { name: "offset" type: "DummyData" top: "offset" dummy_data_param { shape { dim: 2 dim: 6 dim: 5 dim: 6 }
  data_filler { type: "constant" value: 0.25 } } }
layer { name: "sum" type: "Eltwise" bottom: "cat" bottom: "offset" top: "sum" eltwise_param { coeff: 1 coeff: -2 } }
layer { name: "drop" type: "Dropout" bottom: "sum" top: "sum" }
layer { name: "fc" type: "InnerProduct" bottom: "sum" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""),
    # ResNet's in-place chain: conv -> BatchNorm -> Scale -> ReLU, all writing res2a_branch2a.
    "inplace_bn": ((3, 2, 6, 5), """name: "inplace_bn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 2 dim: 6 dim: 5 } } }
layer { name: "res2a_branch2a" type: "Convolution" bottom: "data" top: "res2a_branch2a" convolution_param {
  num_output: 4 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn2a_branch2a" type: "BatchNorm" bottom: "res2a_branch2a" top: "res2a_branch2a"
  batch_norm_param { use_global_stats: true } }
layer { name: "scale2a_branch2a" type: "Scale" bottom: "res2a_branch2a" top: "res2a_branch2a"
  scale_param { bias_term: true } }
layer { name: "res2a_branch2a_relu" type: "ReLU" bottom: "res2a_branch2a" top: "res2a_branch2a" }
layer { name: "pool" type: "Pooling" bottom: "res2a_branch2a" top: "pool" pooling_param { pool: AVE
  global_pooling: true } }
"""),
}


def main():
    caffe.set_mode_cpu()
    for name, (shape, text) in NETS.items():
        rng = np.random.default_rng(sum(map(ord, name)))
        (HERE / f"{name}.prototxt").write_text(text)
        net = caffe.Net(str(HERE / f"{name}.prototxt"), caffe.TEST)
        for layer, blobs in net.params.items():
            for i, blob in enumerate(blobs):
                if net.layers[list(net._layer_names).index(layer)].type == "BatchNorm":
                    # mean, variance (positive), and the scale factor Caffe divides both by
                    blob.data[...] = [rng.standard_normal(blob.data.shape), rng.uniform(0.5, 2, blob.data.shape),
                                      np.full(blob.data.shape, 0.8)][i]
                else:
                    blob.data[...] = rng.standard_normal(blob.data.shape) * 0.5
        net.save(str(HERE / f"{name}.caffemodel"))
        x = rng.standard_normal(shape).astype(np.float32)
        np.save(HERE / f"{name}_input.npy", x)
        net.blobs["data"].data[...] = x
        net.forward()
        np.savez_compressed(HERE / f"{name}_blobs.npz", **{b: v.data.copy() for b, v in net.blobs.items()})
        print(f"{name}: {len(net.blobs)} blobs recorded")


if __name__ == "__main__":
    main()
