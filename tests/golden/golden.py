"""Reading the golden files that tests/golden/make_golden.py recorded with real BVLC Caffe, and the error measure
the golden tests use.

Error measure (rel_err): the relative L2 error ‖ours − caffe‖₂ / max(‖caffe‖₂, 1e-3·√n), n = element count.
Element-wise relative errors blow up on near-zero elements (a gradient that is 1e-9 in Caffe's float32 and 3e-9
here is not a bug); the norm-based error weighs each element by the blob's scale instead. The floor makes an all-zero
(or all-tiny) reference an absolute check: at 1e-5 it allows an RMS difference of 1e-8 per element. One wrong element
of a typical size in these small blobs (≤ a few hundred elements) shows as an error of several percent.
"""

from functools import cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LAYERS, TRAINING = HERE / "layers", HERE / "training"


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise AssertionError(f"shape {ours.shape}, Caffe's is {ref.shape}")
    denom = max(float(np.linalg.norm(ref)), 1e-3 * np.sqrt(max(ref.size, 1)))
    return float(np.linalg.norm(ours - ref)) / denom


@cache
def load(path):
    """{key: array} of one .npz (read once; no pickle)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def layer_cases():
    """[(family, case name)] over every tests/golden/layers/*.npz, in recording order."""
    out = []
    for path in sorted(LAYERS.glob("*.npz")):
        out += [(path.stem, str(name)) for name in load(path)["cases"]]
    return out


def layer_case(family, name):
    """The recorded arrays of one case, keys without the case prefix (type, text, bottom/0, ...)."""
    data = load(LAYERS / f"{family}.npz")
    prefix = f"{name}/"
    return {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}


def indexed(rec, kind):
    """[rec['kind/0'], rec['kind/1'], ...] (None where an index is missing, e.g. a label bottom's diff)."""
    idx = sorted(int(k.split("/")[1]) for k in rec if k.startswith(kind + "/"))
    n = idx[-1] + 1 if idx else 0
    return [rec.get(f"{kind}/{i}") for i in range(n)]


def training_runs():
    return sorted(p.stem for p in TRAINING.glob("*.npz"))
