"""Record what real BVLC Caffe computes, as golden files for tests/golden/test_golden_*.py.

Run (needs real Caffe with pycaffe; the tests themselves need neither Caffe nor this script):

    source /work/caffe-ref/env.sh            # or any shell where `import caffe` works (BVLC master, CPU)
    $CAFFE_PYTHON tests/golden/make_golden.py [--only FAMILY,...] [--no-training]

What it records (float32, as Caffe computes; strings as numpy unicode arrays, so np.load(..., allow_pickle=False)):

  tests/golden/layers/<family>.npz   one small net per case: an Input layer for the bottoms, then the layer under test.
      Seeded bottoms (valid labels / indices / positive values where the layer needs them), seeded blobs written over
      the filled ones, forward, then seeded top diffs and backward. Keys, for case C:
        C/type C/text (the layer's prototxt text) C/phase ("TRAIN"/"TEST") C/backward (bool: backward was run)
        C/bottom/i C/blob/i (as the forward saw them) C/top/i C/blob_after/i (after the forward, when it changed them)
        C/top_diff/i C/bottom_diff/i (only for bottoms that receive a gradient) C/param_diff/i
      and "cases" (the case names in order).
      A case whose bottoms include labels/indices (not back-propagated) is not run with force_backward (Caffe's
      force_backward overrides propagate_down and some layers abort on it); instead its differentiable bottoms pass
      through a Bias layer holding 0 (exact: x + 0) and its tops get loss_weight 1 in the recording net only; the
      recorded text is the layer as written.
  tests/golden/nets/<net>.npz        TEST-phase forward of small nets with in-place chains (conv -> BatchNorm -> Scale
      -> ReLU writing one blob): net text, param/<layer>/<i>, input/<blob>, and blob/<name> for every blob as Caffe
      holds it after the forward (an in-place blob: its value after the last in-place layer).
  tests/golden/training/<run>.npz    short runs of caffe.SGDSolver on small mixed nets, the data fed into Input
      blobs each iteration: solver and net text, initial weights (<layer>/<i>), the data of each iteration
      (data/<blob>, first axis = iteration), each iteration's loss (the net's loss of that forward/backward) and
      the final weights (final/<layer>/<i>).

Deterministic: every array comes from numpy generators seeded by the case name; nothing is drawn from Caffe's RNG
(Dropout in TRAIN, whose forward depends on it, is not recorded; STOCHASTIC pooling has no CPU forward in Caffe).
Must not import torch or caffecam.
"""

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------- case catalogue

class Case:
    """One layer under test. bottoms: [(shape, kind)], kind one of
    'n' normal, 'pos' in [0.5, 2), 'u' in [0, 1), 'prob' rows summing to 1 along axis 1, 'lab:K' integers in [0, K),
    'bin' 0/1, 'cont' sequence-continuation flags (T, N), 'sel' 0/1 with at least one 1, 'idx:N' integers in [0, N),
    or a numpy array. labels: indices of bottoms that receive no gradient (not recorded)."""

    def __init__(self, family, name, text, bottoms, phase="TEST", backward=True, labels=(), blobs=None, trick=False,
                 tops=1):
        self.family, self.name, self.text, self.bottoms = family, name, text.strip(), bottoms
        self.phase, self.backward, self.labels, self.blobs = phase, backward, tuple(labels), blobs
        self.trick, self.tops = trick, tops


CASES = []


def layer(type_, params="", nb=1, nt=1, extra=""):
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(nb))
    tops = " ".join(f'top: "t{i}"' for i in range(nt))
    return f'name: "L" type: "{type_}" {bottoms} {tops} {extra} {params}'.replace("  ", " ")


def add(family, name, type_, params="", bottoms=(((2, 3, 5, 4), "n"),), nt=1, **kw):
    text = layer(type_, params, len(bottoms), nt, kw.pop("extra", ""))
    CASES.append(Case(family, name, text, list(bottoms), tops=nt, **kw))


IMG = (2, 3, 5, 7)  # odd sizes
IMG4 = (2, 4, 7, 6)


def vision():
    f = "vision"
    add(f, "conv_3x3_pad1", "Convolution", "convolution_param { num_output: 4 kernel_size: 3 pad: 1 }",
        [(IMG, "n")])
    add(f, "conv_stride2_nobias", "Convolution",
        "convolution_param { num_output: 5 kernel_size: 3 stride: 2 bias_term: false }", [((2, 3, 9, 8), "n")])
    add(f, "conv_group2_dilation2", "Convolution",
        "convolution_param { num_output: 4 kernel_size: 3 group: 2 dilation: 2 pad: 2 }", [(IMG4, "n")])
    add(f, "conv_rect_hw", "Convolution", "convolution_param { num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 2 "
        "stride_w: 1 pad_h: 1 pad_w: 0 }", [(IMG, "n")])
    add(f, "conv_1x1", "Convolution", "convolution_param { num_output: 2 kernel_size: 1 }", [(IMG, "n")])
    add(f, "conv_5x5_wide", "Convolution", "convolution_param { num_output: 6 kernel_size: 5 pad: 2 stride: 1 }",
        [((1, 2, 9, 11), "n")])
    add(f, "deconv_stride2", "Deconvolution", "convolution_param { num_output: 3 kernel_size: 3 stride: 2 pad: 1 }",
        [(IMG, "n")])
    add(f, "deconv_4x4_s2_nobias", "Deconvolution",
        "convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 bias_term: false }", [((1, 3, 4, 5), "n")])
    add(f, "deconv_group2", "Deconvolution", "convolution_param { num_output: 4 kernel_size: 3 group: 2 }",
        [(IMG4, "n")])
    add(f, "deconv_dilation2_rect", "Deconvolution", "convolution_param { num_output: 2 kernel_h: 3 kernel_w: 2 "
        "dilation: 2 stride_h: 1 stride_w: 2 }", [(IMG, "n")])
    add(f, "pool_max_3s2", "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }", [((2, 3, 8, 7), "n")])
    add(f, "pool_max_pad1", "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }",
        [((2, 3, 8, 7), "n")])
    add(f, "pool_ave_3s2", "Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 }", [((2, 3, 8, 7), "n")])
    add(f, "pool_ave_pad1", "Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }",
        [((2, 3, 8, 7), "n")])
    add(f, "pool_ave_pad1_s1", "Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 }",
        [(IMG, "n")])
    add(f, "pool_max_floor", "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR }",
        [((2, 3, 8, 7), "n")])
    add(f, "pool_ave_floor_pad", "Pooling",
        "pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 round_mode: FLOOR }", [((2, 3, 8, 7), "n")])
    # CEIL rounding with padding: the last window would start in the bottom/right padding, so Caffe drops it.
    add(f, "pool_max_ceil_pad_drop", "Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }",
        [((2, 3, 7, 7), "n")])
    add(f, "pool_ave_ceil_pad_drop", "Pooling", "pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 }",
        [((2, 3, 7, 7), "n")])
    add(f, "pool_ave_ceil_overhang", "Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }",
        [((1, 2, 6, 6), "n")])
    add(f, "pool_global_ave", "Pooling", "pooling_param { pool: AVE global_pooling: true }", [(IMG, "n")])
    # MAX pooling's second top, the mask: PyTorch's own pooling, the explicit path (pad 2 > kernel/2), ties (values
    # 0-2: the first maximum wins). Not here: a window wholly past the edge (kernel 2 < stride 3), whose mask −1 real
    # Caffe's backward then uses as an index (bottom_diff[-1]: it aborts with "double free or corruption").
    add(f, "pool_max_mask", "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }",
        [((2, 3, 8, 7), "n")], nt=2)
    add(f, "pool_max_mask_pad2", "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 2 }",
        [((1, 2, 5, 6), "n")], nt=2)
    add(f, "pool_max_mask_ties", "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }",
        [((2, 2, 7, 7), "lab:3")], nt=2)
    add(f, "pool_max_mask_global", "Pooling", "pooling_param { pool: MAX global_pooling: true }",
        [((2, 3, 4, 5), "lab:3")], nt=2)
    add(f, "pool_global_max", "Pooling", "pooling_param { pool: MAX global_pooling: true }", [(IMG, "n")])
    add(f, "pool_rect_hw", "Pooling", "pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 }",
        [(IMG, "n")])
    add(f, "crop_axis2_offset", "Crop", "crop_param { axis: 2 offset: 1 offset: 2 }",
        [(IMG4, "n"), ((1, 1, 4, 3), "n")], labels=(1,))
    add(f, "crop_axis1_one_offset", "Crop", "crop_param { axis: 1 offset: 1 }",
        [(IMG4, "n"), ((2, 2, 5, 4), "n")], labels=(1,))
    add(f, "crop_default", "Crop", "", [(IMG4, "n"), ((2, 4, 3, 3), "n")], labels=(1,))
    add(f, "im2col_3x3", "Im2col", "convolution_param { kernel_size: 3 stride: 1 pad: 1 }", [(IMG, "n")])
    add(f, "im2col_2x2_s2", "Im2col", "convolution_param { kernel_size: 2 stride: 2 }", [((1, 2, 5, 6), "n")])
    add(f, "spp_max_h3", "SPP", "spp_param { pyramid_height: 3 pool: MAX }", [((2, 3, 9, 7), "n")])
    add(f, "spp_ave_h2", "SPP", "spp_param { pyramid_height: 2 pool: AVE }", [((2, 2, 5, 6), "n")])
    add(f, "spp_max_h1", "SPP", "spp_param { pyramid_height: 1 pool: MAX }", [((1, 3, 4, 5), "n")])


def neuron():
    f = "neuron"
    x = [(IMG, "n")]
    add(f, "absval", "AbsVal", "", x)
    add(f, "bnll", "BNLL", "", [(IMG, "n3")])
    add(f, "clip", "Clip", "clip_param { min: -0.5 max: 0.7 }", x)
    add(f, "dropout_test", "Dropout", "dropout_param { dropout_ratio: 0.3 }", x, phase="TEST")
    add(f, "elu_default", "ELU", "", x)
    add(f, "elu_alpha", "ELU", "elu_param { alpha: 0.4 }", x)
    add(f, "exp_default", "Exp", "", x)
    add(f, "exp_base2_scale_shift", "Exp", "exp_param { base: 2 scale: 0.5 shift: -0.3 }", x)
    add(f, "log_default", "Log", "", [(IMG, "pos")])
    add(f, "log_base10_scale_shift", "Log", "log_param { base: 10 scale: 2 shift: 0.5 }", [(IMG, "pos")])
    add(f, "power_default", "Power", "", x)
    add(f, "power_sq_scale_shift", "Power", "power_param { power: 2 scale: 0.5 shift: -0.2 }", x)
    add(f, "power_frac", "Power", "power_param { power: 0.75 scale: 1.5 shift: 0.1 }", [(IMG, "pos")])
    add(f, "power_zero", "Power", "power_param { power: 0 scale: 2 shift: 1 }", x)
    add(f, "power_one_scale", "Power", "power_param { power: 1 scale: -3 shift: 0.5 }", x)
    add(f, "prelu_channelwise", "PReLU", "", x)
    add(f, "prelu_channel_shared", "PReLU", "prelu_param { channel_shared: true }", x)
    add(f, "prelu_2d", "PReLU", "", [((4, 5), "n")])
    add(f, "relu", "ReLU", "", x)
    add(f, "relu_leaky", "ReLU", "relu_param { negative_slope: 0.1 }", x)
    add(f, "sigmoid", "Sigmoid", "", [(IMG, "n3")])
    add(f, "swish_default", "Swish", "", x)
    add(f, "swish_beta", "Swish", "swish_param { beta: 1.7 }", x)
    add(f, "tanh", "TanH", "", [(IMG, "n3")])
    add(f, "threshold_default", "Threshold", "", x, backward=False)
    add(f, "threshold_0_3", "Threshold", "threshold_param { threshold: 0.3 }", x, backward=False)


def normalization():
    f = "normalization"
    bn_blobs_test = lambda rng, shapes: [rng.normal(size=shapes[0]) * 5, rng.uniform(0.5, 3, shapes[1]) * 5,  # noqa
                                         np.array([5.0])]
    bn_blobs_zero = lambda rng, shapes: [rng.normal(size=shapes[0]), rng.uniform(0.5, 3, shapes[1]),  # noqa
                                         np.array([0.0])]
    add(f, "batchnorm_test_global", "BatchNorm", "", [(IMG4, "n")], phase="TEST", blobs=bn_blobs_test)
    add(f, "batchnorm_test_factor0", "BatchNorm", "", [(IMG4, "n")], phase="TEST", blobs=bn_blobs_zero)
    add(f, "batchnorm_test_eps", "BatchNorm", "batch_norm_param { eps: 0.01 }", [((5, 3), "n")], phase="TEST",
        blobs=bn_blobs_test)
    add(f, "batchnorm_train", "BatchNorm", "", [(IMG4, "n")], phase="TRAIN", blobs=bn_blobs_test)
    add(f, "batchnorm_train_maf", "BatchNorm", "batch_norm_param { moving_average_fraction: 0.9 eps: 0.001 }",
        [((6, 3), "n")], phase="TRAIN", blobs=bn_blobs_test)
    add(f, "batchnorm_train_fresh", "BatchNorm", "", [((3, 2, 3, 5), "n")], phase="TRAIN", blobs="keep")
    add(f, "batchnorm_train_global", "BatchNorm", "batch_norm_param { use_global_stats: true }", [(IMG4, "n")],
        phase="TRAIN", blobs=bn_blobs_test)
    add(f, "batchnorm_test_batchstats", "BatchNorm", "batch_norm_param { use_global_stats: false }", [(IMG4, "n")],
        phase="TEST", blobs=bn_blobs_test)
    add(f, "lrn_across_5", "LRN", "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }", [((2, 7, 4, 5), "n10")])
    add(f, "lrn_across_3_k2", "LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 2 }", [((2, 5, 3, 4), "n")])
    add(f, "lrn_within_3", "LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }",
        [(IMG, "n")])
    add(f, "lrn_within_5", "LRN", "lrn_param { local_size: 5 alpha: 2 beta: 0.5 norm_region: WITHIN_CHANNEL }",
        [((1, 2, 6, 7), "n")])
    add(f, "mvn_default", "MVN", "", [(IMG, "n")])
    add(f, "mvn_no_variance", "MVN", "mvn_param { normalize_variance: false }", [(IMG, "n")])
    add(f, "mvn_across_channels", "MVN", "mvn_param { across_channels: true eps: 0.001 }", [(IMG, "n")])


def common():
    f = "common"
    add(f, "argmax_default", "ArgMax", "", [((3, 4, 2, 3), "n")], backward=False)
    add(f, "argmax_top2_maxval", "ArgMax", "argmax_param { top_k: 2 out_max_val: true }", [((3, 7), "n")],
        backward=False)
    add(f, "argmax_axis1", "ArgMax", "argmax_param { axis: 1 }", [((2, 5, 3, 2), "n")], backward=False)
    add(f, "argmax_axis1_top2_val", "ArgMax", "argmax_param { axis: 1 top_k: 2 out_max_val: true }",
        [((2, 5, 3), "n")], backward=False)
    add(f, "batchreindex", "BatchReindex", "", [((4, 3, 2), "n"), ((6,), np.array([3, 0, 3, 1, 2, 1.0]))],
        labels=(1,), trick=True)
    add(f, "bias_1bottom", "Bias", "", [(IMG, "n")])
    add(f, "bias_axis0_2axes", "Bias", "bias_param { axis: 0 num_axes: 2 }", [(IMG, "n")])
    add(f, "bias_2bottoms", "Bias", "", [(IMG, "n"), ((3, 5), "n")])
    add(f, "bias_num_axes_minus1", "Bias", "bias_param { axis: 2 num_axes: -1 }", [(IMG, "n")])
    add(f, "bias_scalar", "Bias", "bias_param { num_axes: 0 }", [(IMG, "n")])
    add(f, "concat_axis1_3", "Concat", "", [((2, 2, 3, 4), "n"), ((2, 3, 3, 4), "n"), ((2, 1, 3, 4), "n")])
    add(f, "concat_axis0", "Concat", "concat_param { axis: 0 }", [((1, 3, 2), "n"), ((3, 3, 2), "n")])
    add(f, "concat_axis_neg1", "Concat", "concat_param { axis: -1 }", [((2, 3, 2), "n"), ((2, 3, 5), "n")])
    add(f, "eltwise_sum", "Eltwise", "", [(IMG, "n"), (IMG, "n")])
    add(f, "eltwise_sum_coeff", "Eltwise", "eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }",
        [(IMG, "n")] * 3)
    add(f, "eltwise_prod", "Eltwise", "eltwise_param { operation: PROD }", [(IMG, "n")] * 3)
    add(f, "eltwise_prod_unstable", "Eltwise", "eltwise_param { operation: PROD stable_prod_grad: false }",
        [(IMG, "n")] * 2)
    add(f, "eltwise_max", "Eltwise", "eltwise_param { operation: MAX }", [(IMG, "n")] * 3)
    add(f, "embed_bias", "Embed", "embed_param { num_output: 4 input_dim: 5 }",
        [((3, 2), np.array([[0, 4], [2, 2], [4, 1.0]]))], labels=(0,), trick=True)
    add(f, "embed_nobias", "Embed", "embed_param { num_output: 3 input_dim: 6 bias_term: false }",
        [((5,), np.array([5, 0, 1, 5, 3.0]))], labels=(0,), trick=True)
    add(f, "filter_2data", "Filter", "", [((5, 3, 2), "n"), ((5, 4), "n"), ((5,), np.array([1, 0, 1, 1, 0.0]))],
        nt=2, labels=(2,), trick=True)
    add(f, "flatten_default", "Flatten", "", [(IMG, "n")])
    add(f, "flatten_axis2", "Flatten", "flatten_param { axis: 2 }", [(IMG, "n")])
    add(f, "flatten_end_axis", "Flatten", "flatten_param { axis: 1 end_axis: 2 }", [(IMG, "n")])
    add(f, "ip_4d", "InnerProduct", "inner_product_param { num_output: 5 }", [(IMG, "n")])
    add(f, "ip_nobias", "InnerProduct", "inner_product_param { num_output: 3 bias_term: false }", [((4, 7), "n")])
    add(f, "ip_axis2", "InnerProduct", "inner_product_param { num_output: 4 axis: 2 }", [((2, 3, 5, 2), "n")])
    add(f, "ip_transpose", "InnerProduct", "inner_product_param { num_output: 3 transpose: true }",
        [((2, 3, 2, 2), "n")])
    add(f, "parameter", "Parameter", "parameter_param { shape { dim: 3 dim: 4 dim: 2 } }", [])
    for op in ("SUM", "ASUM", "SUMSQ", "MEAN"):
        add(f, f"reduction_{op.lower()}", "Reduction", f"reduction_param {{ operation: {op} }}", [(IMG, "n")])
    add(f, "reduction_mean_axis2_coeff", "Reduction", "reduction_param { operation: MEAN axis: 2 coeff: -1.5 }",
        [(IMG, "n")])
    add(f, "reduction_asum_axis_neg1", "Reduction", "reduction_param { operation: ASUM axis: -1 coeff: 0.5 }",
        [(IMG, "n")])
    add(f, "reshape_0_neg1", "Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 5 } }", [(IMG, "n")])
    add(f, "reshape_axis_numaxes", "Reshape", "reshape_param { shape { dim: 7 dim: 5 } axis: 2 num_axes: 2 }",
        [(IMG, "n")])
    add(f, "reshape_insert_axis", "Reshape", "reshape_param { shape { dim: 1 } axis: 1 num_axes: 0 }",
        [(IMG, "n")])
    add(f, "scale_1bottom", "Scale", "", [(IMG, "n")])
    add(f, "scale_bias", "Scale", "scale_param { bias_term: true }", [(IMG, "n")])
    add(f, "scale_2bottoms_bias", "Scale", "scale_param { bias_term: true }", [(IMG, "n"), ((3, 5), "n")])
    add(f, "scale_axis0_2axes", "Scale", "scale_param { axis: 0 num_axes: 2 }", [(IMG, "n")])
    add(f, "scale_scalar", "Scale", "scale_param { num_axes: 0 bias_term: true }", [(IMG, "n")])
    add(f, "scale_2bottoms_axis0", "Scale", "scale_param { axis: 0 }", [((2, 3, 4), "n"), ((2, 3), "n")])
    add(f, "slice_points", "Slice", "slice_param { axis: 1 slice_point: 1 slice_point: 4 }", [((2, 6, 3, 2), "n")],
        nt=3)
    add(f, "slice_even_axis0", "Slice", "slice_param { axis: 0 }", [((6, 3, 2), "n")], nt=3)
    add(f, "slice_axis_neg1", "Slice", "slice_param { axis: -1 slice_point: 3 }", [(IMG, "n")], nt=2)
    add(f, "silence", "Silence", "", [(IMG, "n"), ((3, 2), "n")], nt=0)
    add(f, "softmax_axis1", "Softmax", "", [(IMG, "n3")])
    add(f, "softmax_axis_neg1", "Softmax", "softmax_param { axis: -1 }", [((2, 3, 6), "n3")])
    add(f, "split_3", "Split", "", [(IMG, "n")], nt=3)
    add(f, "tile_axis1", "Tile", "tile_param { tiles: 3 }", [((2, 3, 2), "n")])
    add(f, "tile_axis_neg1", "Tile", "tile_param { axis: -1 tiles: 2 }", [(IMG, "n")])


def loss():
    f = "loss"
    sc = [((6, 5), "n"), ((6,), "lab:5")]
    add(f, "accuracy_top1", "Accuracy", "", sc, backward=False, labels=(1,))
    add(f, "accuracy_top3", "Accuracy", "accuracy_param { top_k: 3 }", [((8, 6), "n"), ((8,), "lab:6")],
        backward=False, labels=(1,))
    add(f, "accuracy_ignore", "Accuracy", "accuracy_param { ignore_label: 2 }", [((9, 4), "n"), ((9,), "lab:4")],
        backward=False, labels=(1,))
    add(f, "accuracy_spatial", "Accuracy", "", [((2, 4, 3, 2), "n"), ((2, 3, 2), "lab:4")], backward=False,
        labels=(1,))
    add(f, "accuracy_per_class", "Accuracy", "", [((10, 3), "n"), ((10,), "lab:3")], nt=2, backward=False,
        labels=(1,))
    add(f, "contrastive", "ContrastiveLoss", "contrastive_loss_param { margin: 2 }",
        [((6, 4, 1, 1), "n"), ((6, 4, 1, 1), "n"), ((6, 1, 1, 1), "bin")], labels=(2,))
    add(f, "contrastive_legacy", "ContrastiveLoss", "contrastive_loss_param { margin: 3 legacy_version: true }",
        [((6, 4, 1, 1), "n"), ((6, 4, 1, 1), "n"), ((6, 1, 1, 1), "bin")], labels=(2,))
    add(f, "euclidean", "EuclideanLoss", "", [((4, 3, 2), "n"), ((4, 3, 2), "n")])
    add(f, "hinge_l1", "HingeLoss", "", [((6, 4), "n"), ((6,), "lab:4")], labels=(1,))
    add(f, "hinge_l2", "HingeLoss", "hinge_loss_param { norm: L2 }", [((6, 4), "n"), ((6,), "lab:4")], labels=(1,))
    add(f, "infogain_bottom_h", "InfogainLoss", "", [((5, 4), "n"), ((5,), "lab:4"), ((1, 1, 4, 4), "u")],
        labels=(1, 2), trick=True)
    add(f, "infogain_spatial_prob", "InfogainLoss", "", [((2, 3, 2, 2), "n"), ((2, 1, 2, 2), "lab:3"),
                                                         ((1, 1, 3, 3), "u")], nt=2, labels=(1, 2), trick=True,
        extra="loss_weight: 1 loss_weight: 0")
    add(f, "multinomial_logistic", "MultinomialLogisticLoss", "", [((5, 4, 1, 1), "prob"), ((5,), "lab:4")],
        labels=(1,))
    add(f, "sigmoid_ce", "SigmoidCrossEntropyLoss", "", [((4, 5), "n3"), ((4, 5), "bin")], labels=(1,))
    add(f, "sigmoid_ce_ignore", "SigmoidCrossEntropyLoss", "loss_param { ignore_label: -1 }",
        [((4, 5), "n3"), ((4, 5), "bin_ignore")], labels=(1,))
    add(f, "sigmoid_ce_batch_size", "SigmoidCrossEntropyLoss", "loss_param { normalization: BATCH_SIZE }",
        [((3, 2, 4), "n3"), ((3, 2, 4), "u")], labels=(1,))
    add(f, "sigmoid_ce_full_ignore", "SigmoidCrossEntropyLoss", "loss_param { ignore_label: -1 normalization: FULL }",
        [((4, 5), "n3"), ((4, 5), "bin_ignore")], labels=(1,))
    add(f, "softmaxloss", "SoftmaxWithLoss", "", [((6, 5), "n3"), ((6,), "lab:5")], labels=(1,))
    add(f, "softmaxloss_spatial", "SoftmaxWithLoss", "", [((2, 4, 3, 2), "n3"), ((2, 1, 3, 2), "lab:4")],
        labels=(1,))
    for norm in ("FULL", "VALID", "BATCH_SIZE", "NONE"):
        add(f, f"softmaxloss_ignore_{norm.lower()}", "SoftmaxWithLoss",
            f"loss_param {{ ignore_label: 1 normalization: {norm} }}", [((2, 3, 3, 2), "n3"), ((2, 3, 2), "lab:3")],
            labels=(1,))
    add(f, "softmaxloss_normalize_false", "SoftmaxWithLoss", "loss_param { normalize: false }",
        [((5, 3), "n3"), ((5,), "lab:3")], labels=(1,))
    # (A second top, prob, cannot be recorded: BVLC master's SoftmaxWithLoss then needs two loss_weight values, which
    # its internal Softmax layer, set up from a copy of the same parameters, rejects.)
    add(f, "softmaxloss_axis2", "SoftmaxWithLoss", "softmax_param { axis: 2 }",
        [((3, 2, 4), "n3"), ((3, 2), "lab:4")], labels=(1,))


def recurrent():
    f = "recurrent"
    rp = "recurrent_param { num_output: 4 }"
    cont = np.array([[0, 0], [1, 1], [1, 0], [1, 1.0]])  # (T=4, N=2): the second stream restarts at t=2
    add(f, "lstm_basic", "LSTM", rp, [((4, 2, 3), "n"), ((4, 2), cont)], labels=(1,))
    add(f, "lstm_static", "LSTM", rp, [((4, 2, 3), "n"), ((4, 2), cont), ((2, 5), "n")], labels=(1,))
    add(f, "lstm_expose_hidden", "LSTM", "recurrent_param { num_output: 3 expose_hidden: true }",
        [((3, 2, 2), "n"), ((3, 2), np.array([[1, 0], [1, 1], [0, 1.0]])), ((1, 2, 3), "n"), ((1, 2, 3), "n")],
        nt=3, labels=(1,))
    add(f, "rnn_basic", "RNN", rp, [((4, 2, 3), "n"), ((4, 2), cont)], labels=(1,))
    add(f, "rnn_static", "RNN", "recurrent_param { num_output: 3 }", [((3, 2, 2, 2), "n"),
                                                                    ((3, 2), "cont"), ((2, 4), "n")], labels=(1,))
    add(f, "rnn_expose_hidden", "RNN", "recurrent_param { num_output: 3 expose_hidden: true }",
        [((3, 2, 2), "n"), ((3, 2), np.array([[1, 0], [1, 1], [0, 1.0]])), ((1, 2, 3), "n")], nt=2, labels=(1,))
    add(f, "lstmunit", "LSTMUnit", "", [((1, 3, 4), "n"), ((1, 3, 16), "n"), ((1, 3), np.array([[1, 0, 1.0]]))],
        nt=2, labels=(2,))


def input_():
    f = "input"
    CASES.append(Case(f, "dummydata_constant", 'name: "L" type: "DummyData" top: "t0" top: "t1" dummy_data_param { '
                      'shape { dim: 2 dim: 3 } shape { dim: 4 } data_filler { type: "constant" value: 1.5 } '
                      'data_filler { type: "constant" value: -2 } }', [], backward=False, tops=2))
    CASES.append(Case(f, "dummydata_default_zero", 'name: "L" type: "DummyData" top: "t0" dummy_data_param { '
                      'shape { dim: 3 dim: 2 dim: 2 } }', [], backward=False))
    CASES.append(Case(f, "dummydata_legacy_dims", 'name: "L" type: "DummyData" top: "t0" top: "t1" dummy_data_param {'
                      ' num: 2 channels: 3 height: 1 width: 2 data_filler { type: "constant" value: 0.25 } }', [],
                      backward=False, tops=2))


FAMILIES = {"vision": vision, "neuron": neuron, "normalization": normalization, "common": common, "loss": loss,
            "recurrent": recurrent, "input": input_}


# ----------------------------------------------------------------------------------------------------- recording

def rng_for(*names):
    return np.random.default_rng(int.from_bytes(hashlib.sha256("/".join(names).encode()).digest()[:8], "little"))


def make_bottom(rng, shape, kind):
    if isinstance(kind, np.ndarray):
        return kind.reshape(shape).astype(np.float32)
    if kind == "n":
        a = rng.normal(size=shape)
    elif kind.startswith("n") and kind[1:].isdigit():
        a = rng.normal(size=shape) * float(kind[1:])
    elif kind == "pos":
        a = rng.uniform(0.5, 2.0, shape)
    elif kind == "u":
        a = rng.uniform(0, 1, shape)
    elif kind == "prob":
        a = rng.uniform(0.05, 1, shape)
        a = a / a.sum(axis=1, keepdims=True)
    elif kind.startswith("lab:"):
        a = rng.integers(0, int(kind[4:]), shape)
    elif kind == "bin":
        a = rng.integers(0, 2, shape)
    elif kind == "bin_ignore":
        a = rng.integers(-1, 2, shape)
    elif kind == "cont":
        a = np.ones(shape)
        a[0] = 0
    else:
        raise ValueError(kind)
    return np.asarray(a, dtype=np.float32)


def net_text(case, bottoms):
    """The recording net: Input for the bottoms (through zero Bias layers in trick mode), then the layer."""
    lines = [f'name: "golden_{case.name}"']
    if not case.trick and case.backward:
        lines.append("force_backward: true")
    text = case.text
    if bottoms:
        tops, shapes = [], []
        for i, b in enumerate(bottoms):
            through = case.trick and i not in case.labels
            tops.append(f'top: "{"in_" if through else ""}b{i}"')
            shapes.append("shape { " + " ".join(f"dim: {d}" for d in b.shape) + " }")
        lines.append(f'layer {{ name: "input" type: "Input" {" ".join(tops)} input_param {{ {" ".join(shapes)} }} }}')
        if case.trick:
            for i in range(len(bottoms)):
                if i not in case.labels:
                    lines.append(f'layer {{ name: "pass{i}" type: "Bias" bottom: "in_b{i}" top: "b{i}" '
                                 f'bias_param {{ axis: 0 num_axes: 0 filler {{ type: "constant" value: 0 }} }} }}')
    if case.trick and not case.type_is_loss:
        text = text + " loss_weight: 1" * case.tops
    lines.append(f"layer {{ {text} phase: {case.phase} }}")
    return "\n".join(lines) + "\n"


def load_net(caffe, text, phase):
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as fh:
        fh.write(text)
        path = fh.name
    try:
        return caffe.Net(path, caffe.TRAIN if phase == "TRAIN" else caffe.TEST)
    finally:
        os.unlink(path)


def record_case(caffe, case):
    rng = rng_for("layer", case.family, case.name)
    case.type = case.text.split('type: "')[1].split('"')[0]
    case.type_is_loss = case.type.endswith("Loss")
    bottoms = [make_bottom(rng, shape, kind) for shape, kind in case.bottoms]
    net = load_net(caffe, net_text(case, bottoms), case.phase)
    for i, b in enumerate(bottoms):
        name = f"in_b{i}" if case.trick and i not in case.labels else f"b{i}"
        net.blobs[name].data[...] = b
    blobs = net.params["L"] if "L" in net.params else []
    shapes = [tuple(b.data.shape) for b in blobs]
    if case.blobs is None:
        values = [rng.normal(size=s) * 0.5 for s in shapes]
    elif case.blobs == "keep":
        values = [b.data.copy() for b in blobs]
    else:
        values = case.blobs(rng, shapes)
    for b, v in zip(blobs, values):
        b.data[...] = np.asarray(v, dtype=np.float32).reshape(b.data.shape)
    before = [b.data.copy() for b in blobs]
    # Diffs are zeroed before the forward, not between forward and backward: HingeLoss's forward writes its
    # bottom's diff as scratch that its backward reads (hinge_loss_layer.cpp), as in a Net's ForwardBackward.
    for name in net.params:
        for b in net.params[name]:
            b.diff[...] = 0
    for name in net.blobs:
        net.blobs[name].diff[...] = 0
    net.forward()
    lp_tops = [t.split('"')[1] for t in case.text.split("top: ")[1:]]
    out = {"type": np.array(case.type), "text": np.array(case.text), "phase": np.array(case.phase),
           "backward": np.array(case.backward)}
    for i, b in enumerate(bottoms):
        out[f"bottom/{i}"] = b
    for i, b in enumerate(before):
        out[f"blob/{i}"] = b
    for i, t in enumerate(lp_tops):
        out[f"top/{i}"] = net.blobs[t].data.copy()
    for i, (b, v) in enumerate(zip(blobs, before)):
        if not np.array_equal(b.data, v):
            out[f"blob_after/{i}"] = b.data.copy()
    if case.backward:
        for i, t in enumerate(lp_tops):
            top = net.blobs[t]
            if case.type_is_loss and i == 0:
                d = np.full(top.data.shape, rng.uniform(0.5, 2.0))
            elif case.type_is_loss:  # a loss layer's second top (prob): Caffe's backward ignores its diff
                d = np.zeros(top.data.shape)
            else:
                d = rng.normal(size=top.data.shape)
            top.diff[...] = d.astype(np.float32)
            out[f"top_diff/{i}"] = top.diff.copy()
        net.backward()
        for i in range(len(bottoms)):
            if i not in case.labels:
                out[f"bottom_diff/{i}"] = net.blobs[f"b{i}"].diff.copy()
        for i, b in enumerate(blobs):
            out[f"param_diff/{i}"] = b.diff.copy()
    return out


# ----------------------------------------------------------------------------------------------------- training

TRAINING = {}

# A conv net: Deconvolution up, BatchNorm (TRAIN) + Scale, PReLU, Slice into two halves multiplied (Eltwise PROD),
# Concat with the first half, InnerProduct, SoftmaxWithLoss.
TRAINING["mixed_softmax"] = dict(
    inputs={"data": (4, 2, 5, 5), "label": (4,)}, label_kinds={"label": "lab:3"}, iters=12,
    solver='base_lr: 0.05 momentum: 0.9 weight_decay: 0.004 lr_policy: "step" gamma: 0.5 stepsize: 5',
    net="""
layer { name: "input" type: "Input" top: "data" top: "label" input_param { shape { dim: 4 dim: 2 dim: 5 dim: 5 }
  shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 } convolution_param { num_output: 4 kernel_size: 3 stride: 2
  weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "deconv" type: "Deconvolution" bottom: "conv" top: "deconv" convolution_param { num_output: 4
  kernel_size: 3 stride: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn" type: "BatchNorm" bottom: "deconv" top: "bn" }
layer { name: "scale" type: "Scale" bottom: "bn" top: "scale" scale_param { bias_term: true
  filler { type: "constant" value: 1 } } }
layer { name: "prelu" type: "PReLU" bottom: "scale" top: "prelu" }
layer { name: "slice" type: "Slice" bottom: "prelu" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 2 } }
layer { name: "prod" type: "Eltwise" bottom: "s1" bottom: "s2" top: "prod" eltwise_param { operation: PROD } }
layer { name: "cat" type: "Concat" bottom: "prod" bottom: "s1" top: "cat" }
layer { name: "pool" type: "Pooling" bottom: "cat" top: "pool" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 3
  weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
""")

# Regression: InnerProduct, BatchNorm (TRAIN, 2-D) + Scale, PReLU channel_shared, EuclideanLoss.
TRAINING["mlp_euclidean"] = dict(
    inputs={"data": (6, 5), "target": (6, 2)}, label_kinds={}, iters=15,
    solver='base_lr: 0.02 momentum: 0.9 weight_decay: 0.01 lr_policy: "step" gamma: 0.3 stepsize: 6',
    net="""
layer { name: "input" type: "Input" top: "data" top: "target" input_param { shape { dim: 6 dim: 5 }
  shape { dim: 6 dim: 2 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" inner_product_param { num_output: 7
  weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "constant" value: 0.05 } } }
layer { name: "bn" type: "BatchNorm" bottom: "fc1" top: "bn" batch_norm_param { moving_average_fraction: 0.8 } }
layer { name: "scale" type: "Scale" bottom: "bn" top: "scale" scale_param { bias_term: true } }
layer { name: "prelu" type: "PReLU" bottom: "scale" top: "prelu" prelu_param { channel_shared: true } }
layer { name: "fc2" type: "InnerProduct" bottom: "prelu" top: "fc2" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.4 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc2" bottom: "target" top: "loss" }
""")

# Multi-label: Convolution, PReLU, Slice on the batch-less axis, Eltwise PROD of a slice with itself-shaped partner,
# InnerProduct, SigmoidCrossEntropyLoss with a second weighted EuclideanLoss head.
TRAINING["multilabel_sigmoid"] = dict(
    inputs={"data": (3, 3, 6, 6), "label": (3, 4), "aux": (3, 2)}, label_kinds={"label": "bin"}, iters=10,
    solver='base_lr: 0.02 momentum: 0.8 weight_decay: 0.002 lr_policy: "step" gamma: 0.1 stepsize: 4',
    net="""
layer { name: "input" type: "Input" top: "data" top: "label" top: "aux" input_param {
  shape { dim: 3 dim: 3 dim: 6 dim: 6 } shape { dim: 3 dim: 4 } shape { dim: 3 dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 6
  kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "prelu" }
layer { name: "slice" type: "Slice" bottom: "prelu" top: "a" top: "b" top: "c" slice_param { axis: 1 } }
layer { name: "prod" type: "Eltwise" bottom: "a" bottom: "b" top: "ab" eltwise_param { operation: PROD } }
layer { name: "sum" type: "Eltwise" bottom: "ab" bottom: "c" top: "abc" eltwise_param { coeff: 1 coeff: -0.5 } }
layer { name: "pool" type: "Pooling" bottom: "abc" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 4
  weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "fc_aux" type: "InnerProduct" bottom: "pool" top: "fc_aux" inner_product_param { num_output: 2
  weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "loss_aux" type: "EuclideanLoss" bottom: "fc_aux" bottom: "aux" top: "loss_aux" loss_weight: 0.5 }
""")

# The plain types only (Convolution, ReLU, LRN, Pooling, InnerProduct, Concat, Dropout-free, SoftmaxWithLoss), so
# that one run is checkable before the new layer types exist.
TRAINING["plain_conv"] = dict(
    inputs={"data": (4, 3, 7, 7), "label": (4,)}, label_kinds={"label": "lab:4"}, iters=12,
    solver='base_lr: 0.05 momentum: 0.9 weight_decay: 0.005 lr_policy: "step" gamma: 0.5 stepsize: 4',
    net="""
layer { name: "input" type: "Input" top: "data" top: "label" input_param { shape { dim: 4 dim: 3 dim: 7 dim: 7 }
  shape { dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 } convolution_param { num_output: 5 kernel_size: 3 pad: 1
  weight_filler { type: "gaussian" std: 0.2 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3
  stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 3
  kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "cat" type: "Concat" bottom: "pool1" bottom: "conv2" top: "cat" }
layer { name: "fc" type: "InnerProduct" bottom: "cat" top: "fc" inner_product_param { num_output: 4
  weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
""")

# A net fed by DummyData alone (no feed: constant fillers, which Caffe fills once), through MAX pooling with its mask
# top: the spatially constant maps tie in every window, so the gradient goes to each window's first cell.
TRAINING["dummy_data_mask"] = dict(
    inputs={}, label_kinds={}, iters=8,
    solver='base_lr: 0.05 momentum: 0.9 weight_decay: 0.005 lr_policy: "fixed"',
    net="""
layer { name: "data" type: "DummyData" top: "data" top: "label" dummy_data_param { shape { dim: 3 dim: 2 dim: 6
  dim: 6 } shape { dim: 3 } data_filler { type: "constant" value: 0.5 } data_filler { type: "constant" value: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3
  pad: 1 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" top: "mask" pooling_param { pool: MAX kernel_size: 3
  stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 3
  weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
""")


# In-place ReLUs read only by a MAX pooling (GoogLeNet's and AlexNet's conv1 -> relu -> pool1), whose backward
# caffecam folds into the pooling's: biases below 0 leave whole windows at 0 (ties: the gradient goes to the first
# cell, then ReLU's backward drops it); pool1's last window lies partly past the edge (10 -> 5 with CEIL).
TRAINING["relu_pool"] = dict(
    inputs={"data": (4, 3, 10, 10), "label": (4,)}, label_kinds={"label": "lab:3"}, iters=10,
    solver='base_lr: 0.05 momentum: 0.9 weight_decay: 0.005 lr_policy: "fixed"',
    net="""
layer { name: "input" type: "Input" top: "data" top: "label" input_param { shape { dim: 4 dim: 3 dim: 10 dim: 10 }
  shape { dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3
  pad: 1 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: -0.4 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3
  stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 5
  kernel_size: 1 weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "constant" value: -0.2 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 3
  stride: 1 pad: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc" inner_product_param { num_output: 3
  weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
""")


def record_training(caffe, name, spec):
    rng = rng_for("training", name)
    caffe.set_random_seed(1701)  # the fillers; the initial weights are recorded anyway
    net_text_ = f'name: "{name}"\n' + spec["net"].strip() + "\n"
    solver_text = spec["solver"] + f' max_iter: {spec["iters"]} display: 0 snapshot: 0 ' \
                                   'snapshot_after_train: false random_seed: 1701 solver_mode: CPU'
    with tempfile.TemporaryDirectory() as tmp:
        net_path = Path(tmp) / "net.prototxt"
        net_path.write_text(net_text_)
        solver_path = Path(tmp) / "solver.prototxt"
        solver_path.write_text(f'net: "{net_path}"\n{solver_text}\n')
        solver = caffe.SGDSolver(str(solver_path))
    net = solver.net
    out = {"net": np.array(net_text_), "solver": np.array(solver_text), "iters": np.array(spec["iters"])}
    for lname, blobs in net.params.items():
        for i, b in enumerate(blobs):
            out[f"init/{lname}/{i}"] = b.data.copy()
    data = {k: [] for k in spec["inputs"]}
    losses = []
    # A fixed set of 3 batches, cycled (so that the loss falls), recorded once per iteration.
    batches = [{blob: make_bottom(rng, shape, spec["label_kinds"].get(blob, "n"))
                for blob, shape in spec["inputs"].items()} for _ in range(3)]
    for it in range(spec["iters"]):
        for blob, a in batches[it % 3].items():
            net.blobs[blob].data[...] = a
            data[blob].append(a)
        solver.step(1)
        # The loss of this iteration's forward/backward (Caffe's Step: loss = the net's ForwardBackward).
        losses.append(sum(float(net.blobs[b].data.sum()) * w for b, w in net.blob_loss_weights.items() if w))
    for blob, arrays in data.items():
        out[f"data/{blob}"] = np.stack(arrays)
    out["losses"] = np.array(losses, dtype=np.float64)
    for lname, blobs in net.params.items():
        for i, b in enumerate(blobs):
            out[f"final/{lname}/{i}"] = b.data.copy()
    out["layers"] = np.array(list(net.params.keys()))
    return out


# ------------------------------------------------------------------------------------------------ whole nets

# TEST-phase forward passes of small nets with in-place chains (conv -> BatchNorm -> Scale -> ReLU all writing one
# blob, as ResNets do): every blob as Caffe holds it after the forward, i.e. after the last in-place layer.
NETS = {}
NETS["resnet_block_inplace"] = dict(inputs={"data": (2, 3, 7, 7)}, net="""
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 7 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4
  kernel_size: 3 pad: 1 stride: 2 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" convolution_param { num_output: 4
  kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "short" type: "Convolution" bottom: "data" top: "short" convolution_param { num_output: 4
  kernel_size: 1 stride: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "short" bottom: "conv2" top: "sum" }
layer { name: "relu2" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""")
NETS["mixed_inplace"] = dict(inputs={"data": (2, 4, 5, 6)}, net="""
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }
layer { name: "prelu" type: "PReLU" bottom: "data" top: "data" }
layer { name: "slice" type: "Slice" bottom: "data" top: "s1" top: "s2" slice_param { slice_point: 1 } }
layer { name: "tanh" type: "TanH" bottom: "s1" top: "s1" }
layer { name: "mvn" type: "MVN" bottom: "s2" top: "s2n" }
layer { name: "power" type: "Power" bottom: "s2n" top: "s2n" power_param { power: 2 shift: 1 } }
layer { name: "cat" type: "Concat" bottom: "s1" bottom: "s2n" top: "cat" }
layer { name: "deconv" type: "Deconvolution" bottom: "cat" top: "deconv" convolution_param { num_output: 2
  kernel_size: 2 stride: 2 } }
layer { name: "sigmoid" type: "Sigmoid" bottom: "deconv" top: "deconv" }
layer { name: "dropout" type: "Dropout" bottom: "deconv" top: "deconv" }
layer { name: "flat" type: "Flatten" bottom: "deconv" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "bn" type: "BatchNorm" bottom: "ip" top: "ip" }
layer { name: "absval" type: "AbsVal" bottom: "ip" top: "abs" }
""")

# Only the types of the GoogLeNet era: in-place ReLU after Convolution, InnerProduct and Concat, in-place Dropout.
NETS["inception_inplace"] = dict(inputs={"data": (2, 3, 9, 9)}, net="""
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6
  kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 5 alpha: 0.01 beta: 0.75 } }
layer { name: "a" type: "Convolution" bottom: "norm1" top: "a" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "relu_a" type: "ReLU" bottom: "a" top: "a" }
layer { name: "b" type: "Convolution" bottom: "norm1" top: "b" convolution_param { num_output: 4 kernel_size: 3
  pad: 1 } }
layer { name: "relu_b" type: "ReLU" bottom: "b" top: "b" }
layer { name: "c" type: "Pooling" bottom: "norm1" top: "c" pooling_param { pool: MAX kernel_size: 3 stride: 1
  pad: 1 } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" bottom: "c" top: "cat" }
layer { name: "relu_cat" type: "ReLU" bottom: "cat" top: "cat" relu_param { negative_slope: 0.2 } }
layer { name: "pool" type: "Pooling" bottom: "cat" top: "pool" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "relu_fc" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.4 } }
layer { name: "out" type: "InnerProduct" bottom: "fc" top: "out" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "out" top: "prob" }
""")


def record_net(caffe, name, spec):
    rng = rng_for("net", name)
    text = f'name: "{name}"\n' + spec["net"].strip() + "\n"
    net = load_net(caffe, text, "TEST")
    out = {"net": np.array(text)}
    for lname, blobs in net.params.items():
        for i, b in enumerate(blobs):
            if net.layer_dict[lname].type == "BatchNorm":
                v = [rng.normal(size=b.data.shape), rng.uniform(0.5, 2, b.data.shape), np.array([2.0])][i]
            else:
                v = rng.normal(size=b.data.shape) * 0.5
            b.data[...] = np.asarray(v, dtype=np.float32).reshape(b.data.shape)
            out[f"param/{lname}/{i}"] = b.data.copy()
    for blob, shape in spec["inputs"].items():
        a = make_bottom(rng, shape, "n")
        net.blobs[blob].data[...] = a
        out[f"input/{blob}"] = a
    net.forward()
    # The blobs the prototxt names (not those of the Split layers Caffe inserts where a blob has several readers).
    names = [b for lname, tops in net.top_names.items()
             if not (net.layer_dict[lname].type == "Split" and lname.endswith("_split")) for b in tops]
    names = list(dict.fromkeys(names))
    for blob in names:
        out[f"blob/{blob}"] = net.blobs[blob].data.copy()
    out["blobs"] = np.array(names)
    out["layers"] = np.array(list(net.params))
    return out


# ----------------------------------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated families (and/or training run names) to redo")
    ap.add_argument("--no-training", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe

    caffe.set_mode_cpu()
    only = set(filter(None, args.only.split(",")))
    for family, fill in FAMILIES.items():
        if only and family not in only:
            continue
        del CASES[:]
        fill()
        arrays, names = {}, []
        for case in CASES:
            rec = record_case(caffe, case)
            names.append(case.name)
            arrays.update({f"{case.name}/{k}": v for k, v in rec.items()})
        arrays["cases"] = np.array(names)
        path = HERE / "layers" / f"{family}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        print(f"{path.relative_to(HERE.parent.parent)}: {len(names)} cases, {path.stat().st_size / 1024:.0f} KiB")
    for name, spec in NETS.items():
        if only and name not in only and "nets" not in only:
            continue
        rec = record_net(caffe, name, spec)
        path = HERE / "nets" / f"{name}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **rec)
        print(f"{path.relative_to(HERE.parent.parent)}: {len(rec['blobs'])} blobs")
    if args.no_training:
        return
    for name, spec in TRAINING.items():
        if only and name not in only and "training" not in only:
            continue
        rec = record_training(caffe, name, spec)
        path = HERE / "training" / f"{name}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **rec)
        print(f"{path.relative_to(HERE.parent.parent)}: {spec['iters']} iterations, losses "
              f"{rec['losses'][0]:.4f} -> {rec['losses'][-1]:.4f}")


if __name__ == "__main__":
    sys.exit(main())
