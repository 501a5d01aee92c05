"""The host process's memory."""

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> bool:
    """Hands the C heap's free pages back to the operating system (glibc's malloc_trim); False where the C
    library has no such call. XLA's compiler frees hundreds of MB when a program is compiled, which glibc
    keeps in its per-thread arenas, where the buffers of the steps that follow cannot reuse them: call this
    after compiling."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
