"""Will a net fit? The bytes its parameters and blobs need, against the memory this process can still get.

Checked from shapes alone, before anything is allocated: a net whose input is far too large (AlexNet at
22700×22700 wants 2.1 TB for fc6 alone) is refused with one line instead of a torch allocator traceback, or a host
that swaps and kills other processes first.
"""

import math
import os
import resource

from caffecam.errors import CaffeCamError, net_label
from caffecam.proto import caffe_pb2

FLOAT_BYTES = 4  # float32, what the net allocates


def human(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def layer_bytes(net):
    """[(what, bytes)]: the input blobs, then each layer's learnable blobs and the top blobs it makes (a blob an
    in-place layer rewrites counts once). Training doubles it all (Caffe's data and diff)."""
    factor = FLOAT_BYTES * (2 if net.phase == caffe_pb2.TRAIN else 1)
    seen, shared = set(net.input_blobs), set()
    out = [("the input blobs", factor * sum(math.prod(net.blob_shapes[b]) for b in seen))]
    for lp, layer in zip(net.layer_params, net.layers):
        new = [t for t in lp.top if t not in seen]
        seen.update(new)
        params = [p for p in layer.blobs if id(p) not in shared]  # a blob shared by ParamSpec name counts once
        shared.update(id(p) for p in params)
        count = sum(math.prod(p.shape) for p in params) + sum(math.prod(net.blob_shapes[t]) for t in new)
        out.append((f"layer '{lp.name}' ({lp.type})", factor * count))
    return out


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_free():
    """Room left under this process's cgroup memory limit (v2 or v1), or None without a limit."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            roots, limit_file, used_file = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"), "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            roots, limit_file, used_file = ("/sys/fs/cgroup/memory",), "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        # Inside a container the mount shows the container's own cgroup as its root.
        for base in [root + path.rstrip("/") for root in roots] + list(roots):
            limit, used = _read_int(f"{base}/{limit_file}"), _read_int(f"{base}/{used_file}")
            if limit is not None and used is not None and limit < 1 << 60:
                return max(0, limit - used)
    return None


def available_bytes():
    """The least of: the host's available memory (MemAvailable: without swapping), the address space left under
    RLIMIT_AS (ulimit -v) and the room left under a cgroup (container) limit. None when none can be read."""
    candidates = [_cgroup_free()]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            used = 0
        candidates.append(max(0, soft - used))
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def check_fits(net, available=None):
    """Raise CaffeCamError (one line naming the largest layer) when the net's parameters and blobs need more
    bytes than `available` (default: available_bytes())."""
    sizes = layer_bytes(net)
    need = sum(b for _, b in sizes)
    available = available_bytes() if available is None else available
    if available is None or need <= available:
        return
    largest, most = max(sizes, key=lambda s: s[1])
    raise CaffeCamError(f"{net_label(net.name)} needs {human(need)} for its parameters and blobs but only "
                        f"{human(available)} of memory is available; the largest is {largest} with {human(most)}; "
                        "use a smaller input size or batch, or fewer outputs in that layer")
