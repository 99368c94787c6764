"""Freezing the start-up heap: what is alive is exempt from collection, the rest is not; the
native caches' bounds set at start-up; the trimmer that hands freed heap pages back."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time
import weakref
from pathlib import Path

import pytest

from trifecta.core.heap import bound_native_caches, freeze_startup_heap, start_malloc_trimmer


class Node:
    def __init__(self) -> None:
        self.self_ref = self  # a reference cycle: only the collector frees it


def test_frozen_objects_stay_and_new_garbage_is_still_collected() -> None:
    survivor = Node()
    try:
        frozen = freeze_startup_heap()
        # Frozen objects freed by reference counting since (other threads of a long test
        # session) leave the permanent generation, so the count can only have dropped.
        assert 0 < gc.get_freeze_count() <= frozen
        survivor_ref = weakref.ref(survivor)
        later = Node()
        later_ref = weakref.ref(later)
        del survivor, later
        gc.collect()
        assert survivor_ref() is not None  # frozen: never scanned, never freed
        assert later_ref() is None  # created after the freeze: collected as usual
    finally:
        gc.unfreeze()


def test_native_caches_are_bounded_unless_the_operator_chose(monkeypatch) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("MKL_DISABLE_FAST_MM", "0")  # an operator's own choice
    settings = bound_native_caches(onednn_primitives=128)
    assert settings == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "128", "MKL_DISABLE_FAST_MM": "0"}
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "128"


def test_malloc_trimmer_gives_freed_heap_pages_back() -> None:
    """A heap of many small blocks, one kept at its top so glibc cannot shrink the heap by
    itself: after the trimmer's next pass the freed pages are no longer resident."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if getattr(libc, "malloc_trim", None) is None:
        pytest.skip("not glibc")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(40_000)]  # ~160 MB in the main heap (< mmap)
    for address in blocks:
        ctypes.memset(address, 1, 4096)  # resident
    for address in blocks[:-1]:
        libc.free(address)
    before = resident_mb()
    stop = start_malloc_trimmer(interval_s=0.05)
    assert stop is not None
    try:
        deadline = time.monotonic() + 10
        while resident_mb() > before - 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert resident_mb() <= before - 100
    finally:
        stop.set()
        libc.free(blocks[-1])


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")
