"""Multi-process training under torchrun, as Caffe's multi-GPU does it.

Every process runs the prototxt's batch_size; after the backward passes the gradients are summed over all
processes with one all_reduce of a flat buffer and divided by the number of processes (Caffe's P2PSync/NCCL: sum,
then scale by 1/solver_count). Two extra numbers ride in the same buffer — the loss and a stop request — so that
every process takes the same decision (stop on SIGTERM, stop on a NaN loss) at the same iteration.
"""

import atexit
import os
import sys

import torch
import torch.distributed as dist

from caffecam.errors import CaffeCamError, ranks_part


def env():
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) when not launched by torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def under_torchrun():
    return env()[1] > 1


def shared_batches(start, n, rank, world_size):
    """A pass over global batches [start, start + n) shared by the ranks: rank r takes those ≡ r mod world_size (its
    feed's b-th batch being global batch b·world_size + r). Returns this rank's global batch numbers."""
    return range(start + (rank - start) % world_size, start + n, world_size)


def batches_before(cursor, rank, world_size):
    """How many of global batches [0, cursor) are rank's: where its feed resumes."""
    return (cursor - rank + world_size - 1) // world_size


def relaunch(script, argv, nproc):
    """Replace this process by `python -m torch.distributed.run --standalone --nproc_per_node N script argv`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script), *argv]
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def join(cpu=False):
    """Under torchrun (several processes): the process group on this rank's device, GPU LOCAL_RANK (nccl) or, with
    `cpu` or without CUDA, the CPU (gloo); None for a single process. Used by the scripts that shard inputs. From here
    each rank, on its own device, reports its own errors (errors.rank_zero_speaks until now)."""
    if not under_torchrun():
        return None
    ranks_part()
    if cpu or not torch.cuda.is_available():
        group = Group("cpu")
    else:
        torch.cuda.set_device(env()[2])
        group = Group(f"cuda:{env()[2]}")
    atexit.register(group.close)
    return group


class Group:
    """The default process group, set up for `device` (nccl on CUDA, gloo on CPU)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.rank, self.world_size, self.local_rank = env()
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            try:
                dist.init_process_group(backend=backend)
            except (RuntimeError, ValueError) as exc:
                raise CaffeCamError(f"cannot set up the {backend} process group: {exc}") from exc
        self.backend = backend

    def close(self):
        if dist.is_initialized():
            dist.destroy_process_group()

    def _flat(self, tensors, extra=0):
        buf = torch.empty(sum(t.numel() for t in tensors) + extra, dtype=torch.float32, device=self.device)
        offset = 0
        for t in tensors:
            buf[offset:offset + t.numel()].copy_(t.reshape(-1))
            offset += t.numel()
        return buf

    @staticmethod
    def _unflat(buf, tensors):
        offset = 0
        for t in tensors:
            t.copy_(buf[offset:offset + t.numel()].view(t.shape))
            offset += t.numel()

    @torch.no_grad()
    def broadcast(self, tensors, src=0):
        """Overwrite `tensors` on every process with rank `src`'s values."""
        if not tensors:
            return
        buf = self._flat(tensors)
        dist.broadcast(buf, src)
        self._unflat(buf, tensors)

    def broadcast_int(self, value, src=0):
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        dist.broadcast(t, src)
        return int(t.item())

    @torch.no_grad()
    def average_grads(self, grads, extras):
        """grads ← mean over processes (in place); returns the sums over processes of the 1-D tensor `extras`
        as a list of floats (the only host sync)."""
        k = extras.numel()
        buf = self._flat(grads, k)
        buf[buf.numel() - k:].copy_(extras.reshape(-1))
        dist.all_reduce(buf)
        sums = buf[buf.numel() - k:].tolist()
        buf.mul_(1.0 / self.world_size)
        self._unflat(buf, grads)
        return sums

    @torch.no_grad()
    def gather_shared(self, rows, start, n, width):
        """After a pass of shared_batches: this rank's `rows` (1-D tensors of `width` values, one per batch it ran)
        -> every rank's rows, in global batch order."""
        world = self.world_size
        mine = torch.zeros((-(-n // world), width), device=self.device)
        for j, row in enumerate(rows):
            mine[j] = row
        every = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(every, mine)
        firsts = [shared_batches(start, n, r, world).start for r in range(world)]
        return [every[g % world][(g - firsts[g % world]) // world] for g in range(start, start + n)]

    def barrier(self):
        dist.barrier()

    @torch.no_grad()
    def check_identical(self, tensors):
        """True when every process holds exactly rank 0's values of `tensors` (a cheap end-of-run sanity check)."""
        mine = self._flat(tensors)
        ref = mine.clone()
        dist.broadcast(ref, 0)
        differs = torch.tensor([float(not torch.equal(mine, ref))], device=self.device)
        dist.all_reduce(differs)
        return differs.item() == 0
