"""Which nets a SolverParameter names (Solver::InitTrainNet / InitTestNets), and checks of its numbers.

Paths in a solver are relative to the working directory, as in Caffe. The train net comes from exactly one of
train_net_param, train_net, net_param, net; test nets from test_net_param, then test_net, then as many copies of
the generic net (net / net_param) as test_iter has entries left.
"""

import os
import re
from pathlib import Path

from caffecam.engine.prototxt import read_net
from caffecam.errors import CaffeCamError, net_label
from caffecam.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def field_line(solver_path, name, value=None):
    """`solver_path:line` of the first `name: value` entry of a text solver, or just the path if not found."""
    try:
        lines = Path(solver_path).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return str(solver_path)
    rx = re.compile(rf"^\s*{re.escape(name)}\s*:\s*(.*)")
    for i, line in enumerate(lines, 1):
        m = rx.match(line)
        if m and (value is None or str(value) in m.group(1)):
            return f"{solver_path}:{i}"
    return str(solver_path)


def _read(path, field, solver_path):
    if not Path(path).is_file():
        raise CaffeCamError(f"{field_line(solver_path, field, path)}: {field} \"{path}\" not found (relative paths "
                            f"are from the working directory {os.getcwd()}, as in Caffe; run from the project root)")
    return read_net(path)


def _state(phase, given=None):
    state = caffe_pb2.NetState(phase=phase)
    if given is not None:
        state.level = given.level
        state.stage.extend(given.stage)
    return state


def train_net(sp, solver_path):
    """(NetParameter, NetState) of the train net."""
    fields = [f for f in ("train_net_param", "train_net", "net_param", "net") if sp.HasField(f)]
    if not fields:
        raise CaffeCamError(f"{solver_path}: no train net: give one of net, net_param, train_net, train_net_param")
    if len(fields) > 1:
        raise CaffeCamError(f"{solver_path}: the train net is given twice ({', '.join(fields)}); keep one")
    field = fields[0]
    value = getattr(sp, field)
    param = _read(value, field, solver_path) if isinstance(value, str) else value
    return param, _state(TRAIN, sp.train_state if sp.HasField("train_state") else None)


def test_nets(sp, solver_path):
    """[(NetParameter, NetState, test_iter)] of the test nets, in Caffe's order."""
    nets = list(sp.test_net_param)
    nets += [_read(p, "test_net", solver_path) for p in sp.test_net]
    generic = None
    if sp.HasField("net_param"):
        generic = sp.net_param
    elif sp.HasField("net"):
        generic = _read(sp.net, "net", solver_path)
    if generic is not None:
        if len(sp.test_iter) < len(nets):
            raise CaffeCamError(f"{solver_path}: give one test_iter per test net ({len(nets)} test nets)")
        nets += [generic] * (len(sp.test_iter) - len(nets))
    elif len(sp.test_iter) != len(nets):
        raise CaffeCamError(f"{solver_path}: {len(sp.test_iter)} test_iter for {len(nets)} test nets; give one each")
    if len(sp.test_state) and len(sp.test_state) != len(nets):
        raise CaffeCamError(f"{solver_path}: {len(sp.test_state)} test_state for {len(nets)} test nets; give one each")
    out = []
    for i, param in enumerate(nets):
        if sp.test_iter[i] <= 0:
            raise CaffeCamError(f"{field_line(solver_path, 'test_iter')}: test_iter must be > 0")
        state = _state(TEST, sp.test_state[i] if len(sp.test_state) else None)
        out.append((param, state, sp.test_iter[i]))
    return out


def check_numbers(sp, solver_path):
    """The solver fields Caffe CHECKs, as one-line errors."""
    rules = [
        ("max_iter", sp.max_iter >= 0, "must be >= 0"),
        ("iter_size", sp.iter_size >= 1, "must be >= 1"),
        ("average_loss", sp.average_loss >= 1, "must be >= 1"),
        ("display", sp.display >= 0, "must be >= 0"),
        ("test_interval", sp.test_interval >= 0, "must be >= 0"),
        ("snapshot", sp.snapshot >= 0, "must be >= 0"),
        ("base_lr", sp.base_lr >= 0, "must be >= 0"),
    ]
    for name, ok, what in rules:
        if not ok:
            raise CaffeCamError(f"{field_line(solver_path, name)}: {name} {what} (got {getattr(sp, name)})")


def snapshot_prefix(sp, solver_path):
    """snapshot_prefix, or (newer Caffe) the solver file's path without its extension when it is empty."""
    if sp.snapshot_prefix:
        return sp.snapshot_prefix
    return str(Path(solver_path).with_suffix(""))


def tests_before(sp, it):
    """How many test phases ran before update `it` (each reads test_iter batches): those at iterations t < it
    with t % test_interval == 0, t = 0 only when test_initialization."""
    if sp.test_interval <= 0 or it <= 0:
        return 0
    n = (it + sp.test_interval - 1) // sp.test_interval
    return n if sp.test_initialization else n - 1


def _advice(path):
    p = str(path).replace("\\", "/")
    if "demo" in p:
        return "run `make demo` first (it writes the demo images and lists)"
    if p.endswith(".caffemodel") and "bvlc_googlenet" in p:
        return "run `make weights` first (downloads weights/bvlc_googlenet.caffemodel)"
    if p.endswith(".caffemodel"):
        return "check the path (a snapshot is <snapshot_prefix>_iter_N.caffemodel)"
    if p.startswith("data/") or "/data/" in p:
        return "run `make data` first (after `make mpii`), which writes data/train.txt and data/val.txt"
    return "check the path (relative paths start at the working directory)"


def check_weights(paths):
    """Every comma-separated .caffemodel exists, else a one-line error saying what to run first."""
    for path in [p for p in str(paths).split(",") if p]:
        if not Path(path).is_file():
            raise CaffeCamError(f"{path}: weights not found; {_advice(path)}")


def check_sources(net_params):
    """The list files / LMDBs of the nets' data layers exist, else a one-line error saying what to run first."""
    for param in net_params:
        for lp in list(param.layer):
            if lp.type == "ImageData":
                source, ok = lp.image_data_param.source, Path(lp.image_data_param.source).is_file()
            elif lp.type == "Data":
                marker = "data.mdb" if lp.data_param.backend == caffe_pb2.DataParameter.LMDB else "CURRENT"
                source, ok = lp.data_param.source, (Path(lp.data_param.source) / marker).is_file()
            elif lp.type in ("HDF5Data", "WindowData"):
                p = lp.hdf5_data_param if lp.type == "HDF5Data" else lp.window_data_param
                source, ok = p.source, Path(p.source).is_file()
            else:
                continue
            if not ok:
                raise CaffeCamError(f"{source}: data of layer '{lp.name}' in {net_label(param.name)} not found "
                                    f"(working directory {os.getcwd()}); {_advice(source)}")
