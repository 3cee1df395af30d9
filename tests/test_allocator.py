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
