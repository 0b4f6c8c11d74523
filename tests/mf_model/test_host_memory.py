"""Host memory on the CPU: large tensors from the heap within a phase, handed back by the phase's trim."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# In a fresh process (the allocator setting is process-wide): how many anonymous mappings of at least 64 MiB a
# 256 MiB tensor adds, and how much RSS a trim gives back after it is freed.
PROBE = r"""
import sys
import torch
from benchmarks.model_window import rss_gib
from mf_model.host_memory import release_host_memory, reuse_freed_blocks

def big_maps():
    n = 0
    for line in open("/proc/self/maps"):
        parts = line.split()
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if len(parts) < 6 and hi - lo >= 64 << 20:
            n += 1
    return n

if sys.argv[1] == "reuse":
    assert reuse_freed_blocks()
before = big_maps()
t = torch.ones(64 << 20)  # 256 MiB
added = big_maps() - before
del t
held = rss_gib()
release_host_memory()
print(added, int((held - rss_gib()) * 1024))
"""


def _probe(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    added, freed_mib = out.stdout.split()
    return int(added), int(freed_mib)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and /proc: Linux only")
def test_large_tensors_come_from_the_heap_and_the_trim_returns_them():
    added, _ = _probe("default")
    assert added == 1  # glibc's default: one fresh mapping per large block
    added, freed_mib = _probe("reuse")
    assert added == 0  # from the heap (which may have grown in place)
    assert freed_mib >= 200  # kept after the free, until release_host_memory hands it back
