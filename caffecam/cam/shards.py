"""CAM over a data set on several processes (torchrun): rank r takes a contiguous block of the inputs and writes its
own per-image files; rank 0 gathers what the gallery, the report page and the localization scores need from every
rank and writes them over all the inputs, so the outputs are those of one process.

What travels is JSON (the gallery's thumbnails as lossless PNG), never a pickle. The caller sets up the process group
(the scripts: caffecam.train.distributed.join); this module uses torch.distributed's default group.
"""

import base64
import json
import os
import sys

import cv2
import numpy as np
import torch
import torch.distributed as dist


def _plain(value):
    """json.dumps' fallback for NumPy scalars (a box coordinate, a hit flag)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _png(image):
    ok, data = cv2.imencode(".png", image)
    return base64.b64encode(data.tobytes()).decode("ascii")


def _unpng(text):
    return cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_UNCHANGED)


def from_group(group):
    """The Shard of a process group (caffecam.train.distributed.join's), or None for a single process. On the other
    ranks standard output goes nowhere: rank 0 speaks for all (errors reach stderr from the rank that hit them)."""
    if group is None:
        return None
    if group.rank:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- for the rest of the process
    return Shard(group.rank, group.world_size, group.device)


def merge(parts):
    """One part from the ranks' parts: their lists joined in input order (each row starts with the input's index),
    their `unscored` counts summed, their report entries joined."""
    out = {"unscored": sum(p["unscored"] for p in parts), "entries": {}}
    for key in ("records", "failures", "thumbs", "scored"):
        out[key] = sorted((row for p in parts for row in p[key]), key=lambda row: row[0])
    for p in parts:
        out["entries"].update(p["entries"])
    return out


class Shard:
    """This process's share of the inputs: rank `rank` of `world_size`, collectives on `device` (the group's)."""

    def __init__(self, rank=0, world_size=1, device="cpu"):
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)

    def span(self, n):
        """The indices of the n inputs this rank takes: a contiguous block, the first n % world_size ranks one more
        (so rank 0 holds the first images, those the gallery shows)."""
        return range(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def _counts(self, n):
        mine = torch.tensor([n], dtype=torch.int64, device=self.device)
        every = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine)
        return [int(c) for c in every]

    def gather(self, part, thumbs_limit=None):
        """Every rank's `part` (see merge) merged on rank 0; None on the other ranks. Of the gallery's thumbnails
        only the first `thumbs_limit` over all ranks travel (the ranks hold consecutive blocks of the inputs)."""
        thumbs = part["thumbs"]
        if thumbs_limit is not None:
            before = sum(self._counts(len(thumbs))[:self.rank])
            thumbs = thumbs[:max(0, thumbs_limit - before)]
        wire = dict(part, thumbs=[[i, _png(t), c] for i, t, c in thumbs],
                    entries=[[i, e] for i, e in part["entries"].items()])
        data = json.dumps(wire, default=_plain).encode()
        sizes = self._counts(len(data))
        buf = torch.zeros(max(sizes), dtype=torch.uint8)
        buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buf = buf.to(self.device)
        bufs = [torch.empty_like(buf) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(buf, bufs, dst=0)
        if self.rank != 0:
            return None
        parts = []
        for b, s in zip(bufs, sizes):
            p = json.loads(b[:s].cpu().numpy().tobytes())
            p["thumbs"] = [[i, _unpng(t), c] for i, t, c in p["thumbs"]]
            p["entries"] = {int(i): e for i, e in p["entries"]}
            parts.append(p)
        return merge(parts)
