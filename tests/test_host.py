"""mmjax.host: freed C-heap memory goes back to the operating system."""

import ctypes
import ctypes.util
import sys

import pytest

from mmjax import host


def resident_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_release_freed_memory_returns_the_heaps_free_pages():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(50_000)]  # 200 MB of small blocks on the heap
    for block in blocks:
        ctypes.memset(block, 1, 4096)  # touched: resident
    for block in blocks[:-1]:
        libc.free(block)  # the last block pins the heap's top, so free() alone trims nothing
    before = resident_bytes()
    assert host.release_freed_memory()
    after = resident_bytes()
    libc.free(blocks[-1])
    assert before - after > 150 * 2**20, (before, after)
