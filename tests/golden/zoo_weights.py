"""Deterministic weights and input for the zoo nets, computed the same way by make_zoo_golden.py (under pycaffe) and
by tests/engine/test_zoo.py: NumPy only, no RNG, so nothing but these formulas is shared and no weights are stored.

Every value is amp·sin(φ·i + θ) (+ offset): i the element index, φ the golden angle (the sequence spreads evenly
over [-amp, amp] with no short period, so neighbouring kernel taps differ), θ from a CRC of the layer name and blob
index. Convolution/InnerProduct weights have He variance 2/fan_in (sin² averages ½), so activations keep their scale
through VGG; BatchNorm gets per-layer statistics that make it normalize: its variance blob is a formula, and the one
scale-factor blob (Caffe divides mean and variance by it) is what real Caffe's forward measured at that layer,
recorded in the golden file (`bn_factor`), so residual nets stay finite through 152 layers.
"""

import zlib

import numpy as np

PHI = 2.399963229728653  # the golden angle, in radians
CHUNK = 1 << 22  # elements per step: VGG's fc6 (103M weights) without a gigabyte of float64


def wave(n, key, amp=1.0, offset=0.0):
    theta = zlib.crc32(key.encode()) % 100003 / 100003 * 2 * np.pi
    out = np.empty(n, np.float32)
    for start in range(0, n, CHUNK):
        i = np.arange(start, min(n, start + CHUNK), dtype=np.float64)
        out[start:start + len(i)] = offset + amp * np.sin(PHI * i + theta)
    return out


def net_input(shape):
    return wave(int(np.prod(shape)), "input").reshape(shape)


def blob_values(layer_type, layer, index, shape, bn_factor=None):
    """The value of blob `index` of `layer` (a `layer_type` layer), as a float32 array of `shape`."""
    n, key = int(np.prod(shape)), f"{layer}/{index}"
    if layer_type in ("Convolution", "InnerProduct") and index == 0:
        fan_in = n // shape[0]
        return wave(n, key, 2.0 / np.sqrt(fan_in)).reshape(shape)
    if layer_type == "BatchNorm":
        var_formula = wave(n if index < 2 else 1, f"{layer}/1", 0.25, 1.0)
        if index == 2:
            return np.array([bn_factor], np.float32).reshape(shape)
        if index == 1:
            return var_formula.reshape(shape)
        # mean/factor ≈ ±0.1 of the measured standard deviation sqrt(mean(var)/factor)
        return (wave(n, key, 0.1) * np.float32(np.sqrt(var_formula.mean() * bn_factor))).reshape(shape)
    if layer_type == "Scale" and index == 0:
        # The last Scale of a residual branch (KaimingHe's `scale*_branch2c`) gets a small γ, as trained ResNets have:
        # with γ ≈ 1 a 101-layer ResNet of these weights is chaotic (float32 rounding grows to 1e-2 by res4b19, in
        # real Caffe and here alike, against a float64 forward), which would leave nothing to compare.
        amp, offset = (0.02, 0.1) if "branch2c" in layer else (0.2, 1.0)
        return wave(n, key, amp, offset).reshape(shape)
    return wave(n, key, 0.1).reshape(shape)  # biases, Scale's beta, anything else


def bn_factor(var_formula_mean, measured_var):
    """The factor that makes Caffe's variance (variance blob / factor) average to the measured variance."""
    return float(np.float32(var_formula_mean / max(float(measured_var), 1e-12)))
