"""Train a Caffe net from a solver prototxt, as `caffe train` does (log, snapshots, resume), on PyTorch.

Examples:
  python scripts/train.py --solver prototxt/googlenet_cam_solver.prototxt --weights weights/bvlc_googlenet.caffemodel
  python scripts/train.py --solver S.prototxt --snapshot snapshots/x_iter_1000.solverstate      (resume)
  torchrun --nproc_per_node=4 scripts/train.py --solver S.prototxt                              (multi-GPU / node)

On the CPU, wide 3×3 convolutions run as Winograd F(4×4,3×3) or F(2×2,3×3) (the log names them; `engine: CAFFE` on a
layer or CAFFECAM_WINOGRAD=0 keeps them direct, CAFFECAM_WINOGRAD=2 keeps 2×2 tiles), and malloc keeps freed memory
for the next step (CAFFECAM_KEEP_MEMORY=0 turns that off). --bf16 runs convolutions and matrix products in bfloat16
(on CUDA, or on a CPU with AVX512-BF16 or AMX; refused with one line elsewhere), weights and Caffe's update staying
float32. On CUDA, float32 stays IEEE float32 (TF32 only with --tf32) and cuDNN is deterministic when random_seed >=
0, so that a resume continues the same run; the log's first lines say which.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os
import shlex

from caffecam.train.options import parse_args

if __name__ == "__main__":  # --help and option errors answer before torch loads (over a second)
    parse_args(sys.argv[1:], __doc__)

import torch

from caffecam.allocator import keep_freed_memory
from caffecam.data.images import DEFAULT_MAX_PIXELS
from caffecam.engine.prototxt import read_solver
from caffecam.engine.weights import load_weights
from caffecam.errors import CaffeCamError, main_guard
from caffecam.proto import caffe_pb2
from caffecam.train import distributed, solver_nets
from caffecam.train.log import CaffeLogger
from caffecam.train.prefix_lock import PrefixLock
from caffecam.train.snapshots import stop_on_signals
from caffecam.train.solver import Solver


def gpu_ids(arg):
    if arg is None:
        return None
    if arg == "all":
        return list(range(torch.cuda.device_count()))
    try:
        ids = [int(x) for x in arg.split(",") if x != ""]
    except ValueError:
        raise CaffeCamError(f"--gpu {arg}: give a GPU id (0), a list (0,1) or 'all'") from None
    if len(set(ids)) != len(ids):
        raise CaffeCamError(f"--gpu {arg}: a GPU listed twice; each process needs a GPU of its own")
    return ids


def check_gpu(index):
    if not 0 <= index < torch.cuda.device_count():
        raise CaffeCamError(f"GPU {index} does not exist ({torch.cuda.device_count()} visible)")


def maybe_relaunch(args, argv):
    """`--gpu all` / `--gpu 0,1` outside torchrun: run again under torch.distributed.run, one process per GPU.
    CUDA_VISIBLE_DEVICES stays as it is: process i takes the i-th listed id, numbered as this process sees them."""
    if distributed.under_torchrun() or args.cpu or args.gpu is None:
        return
    ids = gpu_ids(args.gpu)
    if len(ids) <= 1 or not torch.cuda.is_available():
        return
    for index in ids:
        check_gpu(index)
    print(f"relaunching under torch.distributed.run with {len(ids)} processes (one per GPU)", file=sys.stderr)
    distributed.relaunch(Path(__file__).resolve(), argv, len(ids))


def choose_device(sp, args, local_rank, warn):
    if args.cpu:
        return torch.device("cpu")
    ids = gpu_ids(args.gpu)
    if ids is None and sp.solver_mode != caffe_pb2.SolverParameter.GPU:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        asked = f"--gpu {args.gpu}" if args.gpu is not None else "solver_mode GPU"
        warn(f"{asked} but CUDA is not available: training on the CPU")
        return torch.device("cpu")
    if distributed.under_torchrun():
        index = local_rank
        if ids:  # one listed GPU per process of this node, by local rank
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", len(ids)))
            if len(ids) != local_world:
                raise CaffeCamError(f"--gpu {args.gpu} lists {len(ids)} GPU(s) for the {local_world} processes "
                                    "torchrun started on this node; list one per process, or leave --gpu out")
            index = ids[local_rank]
    elif ids:
        index = ids[0]
    else:
        index = sp.device_id
    check_gpu(index)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def default_workers(world_size):
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(8, cpus // (2 * world_size)))


class Progress:
    """A tqdm bar (iterations, ETA, images/s) on a terminal only; log lines are written above it."""

    def __init__(self, enabled, total, initial, images_per_iter):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="it", file=sys.stderr, dynamic_ncols=True,
                            leave=False)
            self.images_per_iter = images_per_iter

    def write(self, line):
        self.bar.write(line, file=sys.stderr)

    def update(self, it):
        if self.bar is not None:
            self.bar.update(it - self.bar.n)
            rate = self.bar.format_dict.get("rate")
            if rate:
                self.bar.set_postfix_str(f"{rate * self.images_per_iter:.1f} img/s", refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def resume_command(args, state_path, world=1):
    """The command that continues this run: same devices and process count (the data stream depends on them)."""
    script = os.path.relpath(Path(__file__).resolve())
    script = script if not script.startswith("..") else str(Path(__file__).resolve())
    launch = [sys.executable, script]
    if world > 1 and args.gpu is None and int(os.environ.get("LOCAL_WORLD_SIZE", world)) == world:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", script]
    cmd = launch + ["--solver", args.solver, "--snapshot", state_path]
    if args.cpu:
        cmd.append("--cpu")
    for flag, value in (("--gpu", args.gpu), ("--log", args.log)):
        if value is not None:
            cmd += [flag, value]
    cmd += [flag for flag, on in (("--bf16", args.bf16), ("--tf32", args.tf32)) if on]
    if args.max_pixels != DEFAULT_MAX_PIXELS:
        cmd += ["--max-pixels", str(args.max_pixels)]
    return " ".join(shlex.quote(c) for c in cmd)


@main_guard
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, __doc__)
    if args.max_pixels < 1:
        raise CaffeCamError(f"--max-pixels {args.max_pixels}: must be positive")
    if args.snapshot and args.weights:
        raise CaffeCamError("give --snapshot to resume training or --weights to fine-tune, not both")
    sp = read_solver(args.solver)
    maybe_relaunch(args, argv)
    keep_freed_memory()
    rank, world, local_rank = distributed.env()
    weights = args.weights or ",".join(sp.weights)
    if weights and not args.snapshot:
        solver_nets.check_weights(weights)
    if args.snapshot and not Path(args.snapshot).is_file():
        raise CaffeCamError(f"{args.snapshot}: solver state not found")
    train_param, _ = solver_nets.train_net(sp, args.solver)
    solver_nets.check_sources([train_param] + [p for p, _, _ in solver_nets.test_nets(sp, args.solver)])

    prefix = solver_nets.snapshot_prefix(sp, args.solver)
    log_path = Path(args.log) if args.log else Path(prefix).parent / "train.log"
    # One run per snapshot prefix: a second one would overwrite these snapshots and interleave the log.
    lock = PrefixLock(prefix, solver_nets.field_line(args.solver, "snapshot_prefix")).acquire() if rank == 0 else None
    progress = Progress(rank == 0 and sys.stderr.isatty(), sp.max_iter, 0, 0)
    logger = None
    if rank == 0:
        logger = CaffeLogger(log_path, stream=progress.write if progress.bar is not None else sys.stderr)
    warn = logger.warning if logger is not None else (lambda msg: None)
    if lock is not None and lock.stale:
        warn(f"{lock.path}: left by pid {lock.stale[1]}, which is no longer running on this host; taken over")
    solver = group = None
    try:
        device = choose_device(sp, args, local_rank, warn)
        if args.tf32 and device.type != "cuda":
            warn("--tf32 applies to CUDA only; training in float32 on the CPU")
        group = distributed.Group(device) if world > 1 else None
        if logger is not None:
            logger.info(f"Using {device} ({world} process{'es' if world > 1 else ''}); log file {log_path}")
        workers = args.workers if args.workers is not None else default_workers(world)
        solver = Solver(sp, args.solver, device, logger, rank=rank, world_size=world, workers=workers,
                        channels_last=args.channels_last, bf16=args.bf16, group=group, on_iteration=progress.update,
                        max_pixels=args.max_pixels, tf32=args.tf32)
        per_process = solver.batch_size * sp.iter_size
        if logger is not None:
            sizes = f"{solver.batch_size} × iter_size {sp.iter_size}" if sp.iter_size > 1 else f"{solver.batch_size}"
            logger.info(f"effective batch = {sizes} × {world} process{'es' if world > 1 else ''} = "
                        f"{per_process * world} images per update")
        progress.images_per_iter = per_process * world
        if args.snapshot:
            if logger is not None:
                logger.info(f"Resuming from {args.snapshot}")
            solver.restore(args.snapshot)
        elif weights and rank == 0:
            logger.info(f"Finetuning from {weights}")
            load_weights(solver.net, weights, log=logger.info)
        if progress.bar is not None:
            progress.bar.reset(total=sp.max_iter)
            progress.update(solver.iter)
        with stop_on_signals(solver, warn):
            result = solver.solve()
        if group is not None:
            same = group.check_identical([p.data for p in solver.net.parameters()])
            if logger is not None:
                (logger.info if same else logger.warning)(
                    f"weights identical on all {world} processes: {'yes' if same else 'NO (report this bug)'}")
        if result == "stopped" and logger is not None and solver.last_snapshot_path:
            logger.info(f"To resume: {resume_command(args, solver.last_snapshot_path, world)}")
    except CaffeCamError as exc:
        if logger is not None:  # into the log file too; main_guard prints it to stderr
            logger.stream = None
            logger.log("E", str(exc), "solver.cpp:0")
        raise
    finally:
        progress.close()
        if solver is not None:
            solver.close()
        if group is not None:
            group.close()
        if logger is not None:
            logger.close()
        if lock is not None:
            lock.release()
    return 0


if __name__ == "__main__":
    main()
