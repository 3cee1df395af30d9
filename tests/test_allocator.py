"""keep_freed_memory: with it, a freed 200 MB tensor stays resident (glibc keeps it in the heap); without it
(CAFFECAM_KEEP_MEMORY=0) the block is unmapped on free. Each case runs in a fresh interpreter, since mallopt
settings last for the whole process."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="glibc on Linux only (mallopt and /proc/self/statm)")

PROBE = """
import json, os, sys
import torch
from caffecam.allocator import keep_freed_memory

torch.set_num_threads(1)
PAGE = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE

first = keep_freed_memory()
second = keep_freed_memory()
os.environ["CAFFECAM_KEEP_MEMORY"] = "1" if os.environ.get("CAFFECAM_KEEP_MEMORY") == "0" else "0"
third = keep_freed_memory()  # decided once per process: a later change of the variable does not count
base = rss()
x = torch.empty(50_000_000)  # 200 MB of float32
x.fill_(1.0)  # touch every page
peak = rss()
del x
after = rss()
print(json.dumps({"results": [first, second, third], "base": base, "peak": peak, "after": after}))
"""


def probe(keep):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("CAFFECAM_KEEP_MEMORY", None)
    if not keep:
        env["CAFFECAM_KEEP_MEMORY"] = "0"
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_stays_resident():
    r = probe(keep=True)
    assert r["results"] == [True, True, True]
    assert r["peak"] - r["base"] > 180 * MB
    assert r["after"] - r["base"] > 180 * MB, "freed block was returned to the OS"


def test_disabled_by_environment_returns_memory():
    r = probe(keep=False)
    assert r["results"] == [False, False, False]
    assert r["peak"] - r["base"] > 180 * MB
    assert r["after"] - r["base"] < 40 * MB, "freed block stayed resident although CAFFECAM_KEEP_MEMORY=0"


RESTART_PROBE = """
import os, sys
sys.path.insert(0, {root!r})
print("start", os.getpid(), flush=True)
from caffecam.allocator import reexec_with_huge_pages
reexec_with_huge_pages()
print("tunables", os.environ.get("GLIBC_TUNABLES", ""), "|", os.environ.get("CAFFECAM_GLIBC_TUNABLES_BEFORE"))
from caffecam.allocator import keep_freed_memory
keep_freed_memory()
block = bytearray(256 << 20)  # touched: zero-filled by the kernel, faulted in
for i in range(0, len(block), 4096):
    block[i] = 1
rollup = open("/proc/self/smaps_rollup").read()
print("huge_kb", int(rollup.split("AnonHugePages:")[1].split()[0]))
"""


def restart_probe(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "CAFFECAM_GLIBC_TUNABLES_BEFORE",
                                                              "CAFFECAM_HUGE_PAGES", "CAFFECAM_KEEP_MEMORY")}
    out = subprocess.run([sys.executable, "-c", RESTART_PROBE.format(root=str(ROOT))], env=dict(base, **env),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_scripts_restart_once_with_huge_pages_where_the_kernel_gives_them():
    """Where huge_pages_wanted() (glibc >= 2.35, transparent huge pages in madvise mode): the process runs again
    once (same PID), with the tunable added after the ones already set, and its heap then holds huge pages."""
    from caffecam.allocator import huge_pages_wanted
    wanted = huge_pages_wanted()
    lines = restart_probe(GLIBC_TUNABLES="glibc.malloc.tcache_count=7")
    starts = [line for line in lines if line.startswith("start")]
    tunables = next(line for line in lines if line.startswith("tunables"))
    huge_kb = int(next(line for line in lines if line.startswith("huge_kb")).split()[1])
    if wanted:
        assert len(starts) == 2 and starts[0] == starts[1]  # execve: the same process, started twice
        assert tunables == "tunables glibc.malloc.tcache_count=7:glibc.malloc.hugetlb=1 | glibc.malloc.tcache_count=7"
        assert huge_kb >= 128 * 1024  # most of the 256 MiB block
    else:
        assert len(starts) == 1 and tunables == "tunables glibc.malloc.tcache_count=7 | None"


@pytest.mark.parametrize("switch", ["CAFFECAM_HUGE_PAGES", "CAFFECAM_KEEP_MEMORY"])
def test_huge_pages_switched_off(switch):
    lines = restart_probe(**{switch: "0"})
    assert sum(line.startswith("start") for line in lines) == 1
    assert "tunables  | None" in lines
    assert lines[-1] == "huge_kb 0" or switch == "CAFFECAM_KEEP_MEMORY"


def test_peers_get_the_environment_from_before_the_restart():
    from caffecam.allocator import without_huge_pages
    env = {"GLIBC_TUNABLES": "a.b=1:glibc.malloc.hugetlb=1", "CAFFECAM_GLIBC_TUNABLES_BEFORE": "a.b=1", "X": "y"}
    assert without_huge_pages(env) == {"GLIBC_TUNABLES": "a.b=1", "X": "y"}
    env = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "CAFFECAM_GLIBC_TUNABLES_BEFORE": ""}
    assert without_huge_pages(env) == {}
    assert without_huge_pages({"GLIBC_TUNABLES": "mine=1"}) == {"GLIBC_TUNABLES": "mine=1"}  # not restarted: kept
