"""What a process's memory is made of, and a debug report of what grows while it serves.

The readers (`status_mb`, `smaps_rollup_mb`, `malloc_stats`) are cheap and always available:
the soak test and benchmark read a server's `/proc/<pid>/status` with `status_mb`.

`start_heap_report_if_asked` is a debug aid, off unless `TRIFECTA_HEAP_REPORT` names a file.
Then a daemon thread starts `tracemalloc`, takes a baseline, and every
`TRIFECTA_HEAP_REPORT_INTERVAL_S` seconds (default 30) appends one JSON line: Python's traced
heap and the source lines whose allocations grew most since the baseline, the objects the
collector tracks counted by type (the start-up heap is frozen, so these are objects made while
serving) and their growth, the process's resident memory by kind, glibc's own account of
its heap (bytes in use against bytes free but kept, and how many arenas), SQLite's own
memory, and the torch tensors made since start-up (count, storage, shapes). Read together they
say which kind of growth a soak sees: Python objects (tracemalloc and the type counts grow),
native allocations still in use (glibc's in-use bytes grow, Python's do not), or freed memory
glibc keeps (its free bytes grow). tracemalloc slows every allocation and keeps its own
traces in the same heap, so a reported run's figures are not a plain run's.

`TRIFECTA_HEAP_MEMRAY` (a file) starts memray's tracker with native stacks in the server
instead: it waits `TRIFECTA_HEAP_MEMRAY_AFTER_S` seconds (default 120: past start-up and the
first minutes' ramp), tracks every allocation of every thread for
`TRIFECTA_HEAP_MEMRAY_FOR_S` (default 300), then stops, so the capture's allocations still
held at points of the window (`memray_growth`) say, by library and line, what a stretch of
steady serving kept (glibc's heap, not Python's only: the part tracemalloc cannot see).
The two are exclusive.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

REPORT_ENV = "TRIFECTA_HEAP_REPORT"
INTERVAL_ENV = "TRIFECTA_HEAP_REPORT_INTERVAL_S"
MEMRAY_ENV = "TRIFECTA_HEAP_MEMRAY"
MEMRAY_AFTER_ENV = "TRIFECTA_HEAP_MEMRAY_AFTER_S"
MEMRAY_FOR_ENV = "TRIFECTA_HEAP_MEMRAY_FOR_S"
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
TOP = 15  # rows of each growth table in a report line
STACKS = 5  # the largest growths with their whole stacks


def status_mb(pid: int | str = "self") -> dict[str, float]:
    """Resident memory of a process from /proc/<pid>/status, in MB: VmRSS (all), RssAnon
    (heaps, stacks, anonymous mappings), RssFile (pages of mapped files), RssShmem."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in STATUS_FIELDS:
            found[name] = int(value.split()[0]) / 1024
    return found


def owned_mb(pid: int | str = "self") -> float:
    """The memory a process owns (RssAnon + RssShmem): what it allocated, as opposed to
    clean pages of mapped files, which the kernel may drop and read back."""
    status = status_mb(pid)
    return status["RssAnon"] + status["RssShmem"]


def smaps_rollup_mb(pid: int | str = "self") -> dict[str, float]:
    """/proc/<pid>/smaps_rollup (Linux 4.14+) in MB: Rss, Pss, Private_Dirty, Anonymous..."""
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            found[name] = int(value.split()[0]) / 1024
    return found


class MallocStats(BaseModel):
    """glibc's account of its heap (`mallinfo2`, all arenas, and `malloc_info`), in MB."""

    heap_mb: float  # from the kernel for the heaps (sbrk and arena mappings): arena
    mmapped_mb: float  # large blocks mapped on their own: hblkhd
    in_use_mb: float  # handed out and not freed: uordblks
    free_mb: float  # freed but kept by glibc (fragments, or not yet trimmed): fordblks
    arenas: int  # heaps in malloc_info (the main one plus each thread arena)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def malloc_info_xml() -> str | None:
    """glibc's `malloc_info` (XML, one <heap> per arena), or None where there is none."""
    libc = _libc()
    if libc is None or getattr(libc, "malloc_info", None) is None:
        return None
    buffer, size = ctypes.c_void_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    text = ctypes.string_at(buffer.value, size.value).decode()  # type: ignore[arg-type]
    libc.free(buffer)
    return text


def malloc_stats() -> MallocStats | None:
    """glibc's heap figures for this process, or None where the C library is not glibc."""
    libc = _libc()
    mallinfo2 = getattr(libc, "mallinfo2", None) if libc is not None else None
    xml = malloc_info_xml()
    if mallinfo2 is None or xml is None:
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    mb = 1 / (1024 * 1024)
    return MallocStats(
        heap_mb=info.arena * mb,
        mmapped_mb=info.hblkhd * mb,
        in_use_mb=info.uordblks * mb,
        free_mb=info.fordblks * mb,
        arenas=len(ET.fromstring(xml).findall("heap")),
    )


def type_counts() -> Counter[str]:
    """Objects the collector tracks, by type name. Frozen objects (the start-up heap, see
    `core/heap.py`) sit in the permanent generation, which `gc.get_objects` leaves out."""
    return Counter(type(o).__name__ for o in gc.get_objects())


def sqlite_mb() -> float | None:
    """Memory SQLite holds in this process (`sqlite3_memory_used`: page caches, statements,
    schemas of every connection), or None when no SQLite library is loaded."""
    if "sqlite3" not in sys.modules:
        return None
    name = ctypes.util.find_library("sqlite3")
    used = getattr(ctypes.CDLL(name), "sqlite3_memory_used", None) if name else None
    if used is None:
        return None
    used.restype = ctypes.c_int64
    return float(used()) / 2**20


def tensor_summary(top: int = 10) -> dict[str, object] | None:
    """Live torch tensors the collector tracks (made since start-up: the start-up heap is
    frozen), their storage in MB (each storage counted once) and the commonest shapes."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    storages: dict[int, int] = {}
    shapes: Counter[str] = Counter()
    for o in gc.get_objects():
        # type(), not isinstance: isinstance reads __class__, which wakes lazy modules.
        if issubclass(type(o), torch.Tensor) and not o.is_meta:
            storage = o.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            shapes[f"{tuple(o.shape)} {o.dtype}"] += 1
    return {
        "count": sum(shapes.values()),
        "storage_mb": sum(storages.values()) / 2**20,
        "shapes": shapes.most_common(top),
    }


class HeapReporter:
    """The debug report's thread: a baseline, then one JSON line every `interval_s`."""

    def __init__(self, path: Path, interval_s: float, frames: int = 8) -> None:
        self.path = path
        self.interval_s = interval_s
        self.frames = frames
        self.stop = threading.Event()
        self.ready = threading.Event()  # set once the baseline is taken

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heap-report", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 120.0) -> None:
        """Stop after the report in progress, if any, and stop tracemalloc."""
        self.stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        tracemalloc.start(self.frames)
        started = time.monotonic()
        baseline, counts = tracemalloc.take_snapshot(), type_counts()
        self.ready.set()
        while not self.stop.wait(self.interval_s):
            line = self.report(baseline, counts, time.monotonic() - started)
            with self.path.open("a") as out:
                out.write(json.dumps(line) + "\n")
        tracemalloc.stop()

    @staticmethod
    def report(
        baseline: tracemalloc.Snapshot, counts: Counter[str], elapsed: float
    ) -> dict[str, object]:
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]  # not its own bookkeeping
        )
        grown = [d for d in snapshot.compare_to(baseline, "lineno") if d.size_diff > 0][:TOP]
        # The same growth by whole stack: a json or pydantic line says little without its
        # caller. Most recent frame last, as in a Python traceback.
        stacks = [d for d in snapshot.compare_to(baseline, "traceback") if d.size_diff > 0][:STACKS]
        now = type_counts()
        objects = (now - counts).most_common(TOP)
        stats = malloc_stats()
        return {
            "seconds": round(elapsed, 1),
            "traced_mb": tracemalloc.get_traced_memory()[0] / 2**20,
            "python_growth": [
                {"where": str(d.traceback[0]), "kb": d.size_diff / 1024, "blocks": d.count_diff}
                for d in grown
            ],
            "python_growth_stacks": [
                {
                    "kb": d.size_diff / 1024,
                    "blocks": d.count_diff,
                    "stack": [str(frame) for frame in d.traceback],
                }
                for d in stacks
            ],
            "objects": sum(now.values()),
            "object_growth": dict(objects),
            "status_mb": status_mb(),
            "smaps_rollup_mb": smaps_rollup_mb(),
            "malloc": stats.model_dump() if stats else None,
            "sqlite_mb": sqlite_mb(),
            "tensors": tensor_summary(),
        }


class MemrayWindow:
    """memray's tracker (native stacks) over one stretch of a server's life, on a thread."""

    def __init__(self, path: Path, after_s: float, for_s: float) -> None:
        self.path, self.after_s, self.for_s = path, after_s, for_s
        self.stop = threading.Event()
        self.tracking = threading.Event()  # set while the tracker runs
        self.done = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heap-memray", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 120.0) -> None:
        self.stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        import memray  # a dev dependency: only a debugging run gets here

        try:
            if self.stop.wait(self.after_s):
                return
            self.path.unlink(missing_ok=True)
            with memray.Tracker(self.path, native_traces=True):
                self.tracking.set()
                self.stop.wait(self.for_s)
            self.tracking.clear()
        finally:
            self.done.set()


# Native frames that name who allocated (checked in order in the innermost frames).
LIBRARIES = (
    ("oneDNN/ideep", ("dnnl", "ideep")),
    ("torch", ("c10::", "at::")),
    ("SQLite", ("sqlite3",)),
    ("pymalloc arenas", ("new_arena",)),
    ("numpy", ("PyDataMem",)),
)


def _library(functions: list[str]) -> str:
    text = " ".join(functions[:16])
    return next((name for name, marks in LIBRARIES if any(m in text for m in marks)), "other")


def _site(stack: list[tuple[str, str, int]]) -> str:
    """The innermost Python frame of the application (not the standard library's, not an
    installed package's): the line that made the allocation, or made the call that did."""
    for function, file, line in stack:
        if file.endswith(".py") and "site-packages" not in file and "/lib/python3" not in file:
            return f"{function} {file.rsplit('/src/', 1)[-1]}:{line}"
    return "-"


class HeldBySite(BaseModel):
    """MB a memray window's allocations of one (library, application line) still held."""

    library: str
    site: str
    mb: list[float]  # at each mark of the window


def memray_growth(path: Path, marks: int = 4, top: int = 20) -> list[HeldBySite]:
    """What a memray window's allocations still held at `marks` even points of the window,
    in MB, by (library, application line), largest growth from the first mark to the last
    first. A bounded cache that turns over shows a step and then a flat line (its new
    entries replace entries made before the window, which the capture cannot see freed);
    a structure that keeps growing keeps rising."""
    import memray

    reader = memray.FileReader(path)
    snapshots = len(list(reader.get_memory_snapshots()))
    points = [max(1, snapshots * (i + 1) // marks) for i in range(marks)]
    held: dict[tuple[str, str], list[int]] = {}
    for record in reader.get_temporal_allocation_records(merge_threads=True):
        try:
            stack = record.hybrid_stack_trace(max_stacks=60)
        except NotImplementedError:  # a capture without native stacks
            stack = record.stack_trace(max_stacks=60)
        key = (_library([f for f, _, _ in stack]), _site(stack))
        row = held.setdefault(key, [0] * marks)
        for interval in record.intervals:
            made, freed = interval.allocated_before_snapshot, interval.deallocated_before_snapshot
            for i, point in enumerate(points):
                if made <= point and (freed is None or freed > point):
                    row[i] += interval.n_bytes
    reader.close()
    rows = sorted(held.items(), key=lambda kv: kv[1][0] - kv[1][-1])[:top]
    return [
        HeldBySite(library=lib, site=site, mb=[b / 2**20 for b in sizes])
        for (lib, site), sizes in rows
    ]


def start_heap_report_if_asked() -> HeapReporter | MemrayWindow | None:
    """Start the debug report when `TRIFECTA_HEAP_REPORT` names a file, or memray's window
    when `TRIFECTA_HEAP_MEMRAY` does (both off by default: they slow a server); returns the
    reporter (`close()` ends it), or None."""
    capture = os.environ.get(MEMRAY_ENV)
    if capture:
        window = MemrayWindow(
            Path(capture),
            float(os.environ.get(MEMRAY_AFTER_ENV, "120")),
            float(os.environ.get(MEMRAY_FOR_ENV, "300")),
        )
        window.start()
        return window
    target = os.environ.get(REPORT_ENV)
    if not target:
        return None
    reporter = HeapReporter(Path(target), float(os.environ.get(INTERVAL_ENV, "30")))
    reporter.start()
    return reporter
