"""release_memory gives a freed heap back to the OS (a stage=all process kept its DPO's peak otherwise)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from skillweave.core.memory import _malloc_trim

# In a fresh interpreter: 200 MB of tensors small enough to live on the C heap, freed, with a later allocation
# keeping the heap's top in use, so that free() alone returns none of it.
SCRIPT = """
import gc, os, torch
from skillweave.core.memory import release_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
freed = [torch.ones(25_000) for _ in range(2000)]
kept = torch.ones(10)
del freed
gc.collect()
before = rss()
release_memory()
print(before, rss())
"""


@pytest.mark.skipif(_malloc_trim() is None or not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_memory_returns_a_freed_heap_to_the_os():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    before, after = map(float, out.split())
    assert before - after > 150  # MiB of the 200 freed
