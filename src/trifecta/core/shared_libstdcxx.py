"""Put the shared C++ runtime in the process's global scope before an extension that
carries its own.

usearch's compiled extension links a static copy of libstdc++ and exports it. When it is
loaded before the shared libstdc++ is global, torch's C++ stream writes run into the
static copy's locale symbols and throw and unwind on every write: TorchScript's tracer,
which names every value it records that way, took minutes instead of a fraction of a
second (the embedder's traced MiniLM, `core/embed_compiled.py`). Loading the shared
library with RTLD_GLOBAL first keeps each copy to itself; torch imported first does the
same, but importing torch here would slow every command that only reads the index.
Measured: first embedding after importing usearch 0.46 s with this, over 120 s without.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def share_libstdcxx() -> bool:
    """Load the shared libstdc++ into the global scope once; False where there is none
    (another platform's C++ runtime: nothing to do there)."""
    name = ctypes.util.find_library("stdc++") or "libstdc++.so.6"
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True
