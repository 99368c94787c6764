"""Freezing the start-up heap: what is alive is exempt from collection, the rest is not; the
native caches' bounds set at start-up; the trimmer that hands freed heap pages back."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
import weakref
from pathlib import Path

import pytest

from trifecta.core.heap import (
    TRIMS,
    bound_native_caches,
    freeze_startup_heap,
    start_malloc_trimmer,
)
from trifecta.core.heap_report import (
    INTERVAL_ENV,
    REPORT_ENV,
    HeapReporter,
    malloc_stats,
    start_heap_report_if_asked,
)


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


def test_native_caches_are_bounded_unless_the_operator_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("MKL_DISABLE_FAST_MM", "0")  # an operator's own choice
    settings = bound_native_caches(onednn_primitives=128, ideep_entries=16)
    assert settings == {
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "128",
        "LRU_CACHE_CAPACITY": "16",
        "MKL_DISABLE_FAST_MM": "0",
    }
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "128"


def test_malloc_trimmer_gives_freed_heap_pages_back() -> None:
    """A heap of many small blocks, one kept at its top so glibc cannot shrink the heap by
    itself: after the trimmer's next pass the freed pages are no longer resident, and the
    trimmer's own count (`TRIMS`, in the sizes report) says so."""
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
    trims, returned, seconds = TRIMS.trims, TRIMS.returned_mb, TRIMS.seconds
    stop = start_malloc_trimmer(interval_s=0.05)
    assert stop is not None
    try:
        deadline = time.monotonic() + 10
        while resident_mb() > before - 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert resident_mb() <= before - 100
        deadline = time.monotonic() + 5  # the pass that trimmed records after the call
        while TRIMS.returned_mb - returned < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert TRIMS.trims > trims and TRIMS.seconds > seconds
        assert TRIMS.returned_mb - returned >= 100
    finally:
        stop.set()
        libc.free(blocks[-1])


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


FOLLOW_AN_ALLOCATION = """
import json
from trifecta.core.heap_report import owned_mb, smaps_rollup_mb, status_mb
before = status_mb()
kept = bytearray(b"\\x01") * (64 * 2**20)  # every byte written, so every page resident
after = status_mb()
print(json.dumps({"before": before, "after": after, "owned": owned_mb(),
                  "anonymous": smaps_rollup_mb()["Anonymous"]}))
"""


def test_status_and_owned_memory_follow_an_allocation() -> None:
    # In a fresh interpreter: inside the suite's process, other tests' threads (a heap
    # trimmer among them) free and hand back pages while the allocation is measured.
    run = subprocess.run(
        [sys.executable, "-c", FOLLOW_AN_ALLOCATION], capture_output=True, text=True, check=True
    )
    seen = json.loads(run.stdout)
    before, after = seen["before"], seen["after"]
    assert set(after) == {"VmRSS", "RssAnon", "RssFile", "RssShmem"}
    assert after["RssAnon"] - before["RssAnon"] >= 60
    assert seen["owned"] >= after["RssAnon"]
    assert seen["anonymous"] >= 60


def test_malloc_stats_tell_blocks_in_use_from_freed_ones() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if getattr(libc, "mallinfo2", None) is None:
        pytest.skip("not glibc 2.33+")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    start = malloc_stats()
    assert start is not None and start.arenas >= 1
    blocks = [libc.malloc(4096) for _ in range(10_000)]  # ~40 MB below the mmap threshold
    held = malloc_stats()
    assert held is not None and held.in_use_mb - start.in_use_mb >= 35
    for address in blocks[:-1]:
        libc.free(address)
    freed = malloc_stats()
    assert freed is not None and held.in_use_mb - freed.in_use_mb >= 35
    assert freed.free_mb - held.free_mb >= 35  # glibc keeps them until trimmed
    libc.free(blocks[-1])


def test_heap_report_names_the_line_that_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "heap.jsonl"
    monkeypatch.delenv(REPORT_ENV, raising=False)
    assert start_heap_report_if_asked() is None  # off by default
    monkeypatch.setenv(REPORT_ENV, str(report))
    monkeypatch.setenv(INTERVAL_ENV, "0.3")
    reporter = start_heap_report_if_asked()
    assert isinstance(reporter, HeapReporter)
    try:
        # Counting every object of a test session takes seconds on a loaded machine.
        assert reporter.ready.wait(60)
        grown = [Node() for _ in range(20_000)]  # the line the report must name
        deadline = time.monotonic() + 90
        lines: list[dict] = []
        while time.monotonic() < deadline:
            text = report.read_text() if report.exists() else ""
            # Whole lines only: the reporter may be half-way through writing the next.
            lines = [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]
            if lines and lines[-1]["object_growth"].get("Node", 0) >= 20_000:
                break
            time.sleep(0.1)
    finally:
        reporter.close()
    assert not tracemalloc.is_tracing()
    last = lines[-1]
    assert last["object_growth"]["Node"] >= 20_000
    assert any("test_heap.py" in row["where"] and row["kb"] > 500 for row in last["python_growth"])
    assert last["status_mb"]["RssAnon"] > 0 and last["malloc"]["arenas"] >= 1
    del grown


def test_sqlite_and_tensor_figures_count_what_was_made() -> None:
    import sqlite3

    import torch

    from trifecta.core.heap_report import sqlite_mb, tensor_summary

    before = tensor_summary()
    kept = [torch.zeros(256, 1024) for _ in range(4)]  # 1 MB each
    after = tensor_summary()
    assert before is not None and after is not None
    assert after["count"] == before["count"] + 4  # type: ignore[operator]
    assert after["storage_mb"] >= before["storage_mb"] + 3.9  # type: ignore[operator]
    connection = sqlite3.connect(":memory:")
    connection.execute("create table t (x)")
    connection.executemany("insert into t values (?)", [("x" * 200,) for _ in range(20_000)])
    used = sqlite_mb()
    assert used is not None and used > 1  # the table's pages, in SQLite's own allocator
    connection.close()
    del kept


def test_tensor_figures_count_onednn_packed_weights() -> None:
    """The embedder packs its weights into oneDNN's opaque layout, which has no storage to
    read: the summary counts them by size instead of failing (it failed the report's thread)."""
    import torch

    from trifecta.core.heap_report import tensor_summary

    before = tensor_summary()
    packed = torch.randn(512, 1024).to_mkldnn()  # 2 MB, opaque
    after = tensor_summary()
    assert before is not None and after is not None
    assert packed.is_mkldnn
    assert after["count"] == before["count"] + 1  # type: ignore[operator]
    assert after["storage_mb"] >= before["storage_mb"] + 1.9  # type: ignore[operator]
