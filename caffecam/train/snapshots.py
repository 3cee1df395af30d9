"""Solver snapshots (<prefix>_iter_N.caffemodel + .solverstate, written atomically), resume, and stopping on a
signal with a snapshot.

SolverState: iter, learned_net (the .caffemodel path as written), history blobs in the layout of sgd.py (that of
real Caffe, so its .solverstate files resume here), current_step. The data position is not stored: it follows from
iter (see Solver._reopen_feeds).
"""

import contextlib
import signal
import tempfile
import time
from pathlib import Path

from caffecam.engine.prototxt import read_binary, write_binary
from caffecam.engine.weights import array_to_blob, blob_to_array, copy_weights, read_caffemodel, save_caffemodel
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2


def check_writable(prefix, where):
    """Caffe's CheckSnapshotWritePermissions: an unwritable snapshot folder fails at the start, not hours later."""
    folder = Path(prefix).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test."):
            pass
    except OSError as exc:
        raise CaffeCamError(f"{where}: cannot write snapshots to '{folder}' (snapshot_prefix '{prefix}'): "
                            f"{exc.strerror or exc}; fix snapshot_prefix or the folder's permissions") from None


def write(solver):
    """Write the Solver's <prefix>_iter_N.caffemodel and .solverstate (atomically); returns the .solverstate path."""
    if solver.sp.snapshot_format != caffe_pb2.SolverParameter.BINARYPROTO:
        solver._warn("snapshot_format HDF5 is not supported; writing binary proto snapshots")
    model = f"{solver.prefix}_iter_{solver.iter}.caffemodel"
    if solver.log is not None:
        solver.log.snapshot(model)
    save_caffemodel(solver.net, model)
    state = caffe_pb2.SolverState(iter=solver.iter, learned_net=model, current_step=solver.current_step)
    for array in solver.updater.history_arrays():
        array_to_blob(array, state.history.add())
    path = f"{solver.prefix}_iter_{solver.iter}.solverstate"
    if solver.log is not None:
        solver.log.solver_state(path)
    try:
        write_binary(path, state)
    except OSError as exc:
        raise CaffeCamError(f"{path}: cannot write ({exc.strerror or exc})") from None
    solver._last_snapshot, solver.last_snapshot_path = solver.iter, path
    return path


def restore(solver, path):
    """Resume the Solver from a .solverstate: weights (learned_net), history, iter, current_step, data positions."""
    if str(path).endswith(".h5"):
        raise CaffeCamError(f"{path}: HDF5 solver states are not supported; use a .solverstate")
    state = read_binary(path, caffe_pb2.SolverState, "solverstate")
    if solver.log is not None and solver.root:
        solver.log.restoring(path)
    if not state.HasField("iter") or state.iter < 0:
        raise CaffeCamError(f"{path}: not a solver state (no iteration number)")
    if state.learned_net:
        stored = Path(state.learned_net)
        beside = Path(path).parent / stored.name
        model = stored if stored.is_file() else beside if beside.is_file() else None
        if model is None:
            raise CaffeCamError(f"{path}: its weights '{stored}' are missing (also looked for {beside}); "
                                "copy the .caffemodel next to the .solverstate")
        report = copy_weights(solver.net, read_caffemodel(model), str(model))
        if report.fresh:
            raise CaffeCamError(f"{model}: has no weights for layer(s) {', '.join(report.fresh[:5])} of net "
                                f"'{solver.net.name}'; the snapshot is from another net")
    solver.updater.load_history([blob_to_array(b) for b in state.history], str(path))
    solver.iter, solver.current_step = state.iter, state.current_step
    solver._last_snapshot = solver.iter
    solver._reopen_feeds()


@contextlib.contextmanager
def stop_on_signals(solver, log=None):
    """While inside: SIGINT/SIGTERM ask `solver` to finish the iteration, snapshot and stop; a second one aborts."""
    first = []

    def handler(signum, frame):
        # Under torchrun a Ctrl-C reaches a worker twice (from the terminal, then forwarded by the agent): a second
        # signal aborts only when it comes more than 2 s after the first.
        if first:
            if time.monotonic() - first[0] > 2.0:
                raise KeyboardInterrupt
            return
        first.append(time.monotonic())
        solver.request_stop()
        if log is not None:
            name = signal.Signals(signum).name
            log(f"{name} received: finishing this iteration, then writing a snapshot (again to abort without one)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
