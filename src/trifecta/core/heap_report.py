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
glibc keeps (its free bytes grow). `TRIFECTA_HEAP_REPORT_BASELINE_S` takes the baseline that
many seconds after the start instead (tracing from the start), so the growth is between two
points of a run, net of what was freed. tracemalloc slows every allocation and keeps its own
traces in the same heap, so a reported run's figures are not a plain run's.

`TRIFECTA_HEAP_MEMRAY` (a file) starts memray's tracker with native stacks in the server
instead: it waits `TRIFECTA_HEAP_MEMRAY_AFTER_S` seconds (default 120: past start-up and the
first minutes' ramp), tracks every allocation of every thread for
`TRIFECTA_HEAP_MEMRAY_FOR_S` (default 300), then stops (`core/heap_memray.py`: what the
window's allocations still held, by library and line, is what a stretch of steady serving
kept, glibc's heap included: the part tracemalloc cannot see).
The two are exclusive.

`TRIFECTA_HEAP_SIZES` (a file) is the cheap part alone, safe for a measured run: every
`TRIFECTA_HEAP_REPORT_INTERVAL_S` seconds one JSON line of the process's owned memory, SQLite's
and glibc's figures, and the entries of each bounded structure that registered itself with
`track` (the router's prefix index, the served and hop logs...) against its bound, so a soak
can tell a cache filling to its bound from a leak. A learner process writes its own files
beside the server's (`<file>.learner`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
import weakref
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from trifecta.core.heap import TRIMS
from trifecta.core.heap_memray import MemrayWindow

REPORT_ENV = "TRIFECTA_HEAP_REPORT"
INTERVAL_ENV = "TRIFECTA_HEAP_REPORT_INTERVAL_S"
MEMRAY_ENV = "TRIFECTA_HEAP_MEMRAY"
MEMRAY_AFTER_ENV = "TRIFECTA_HEAP_MEMRAY_AFTER_S"
MEMRAY_FOR_ENV = "TRIFECTA_HEAP_MEMRAY_FOR_S"
SIZES_ENV = "TRIFECTA_HEAP_SIZES"
BASELINE_ENV = "TRIFECTA_HEAP_REPORT_BASELINE_S"
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
TOP = 25  # rows of each growth table in a report line
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


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (a learner process a server starts, say), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def tree_status_mb(pid: int) -> dict[str, float]:
    """`status_mb` summed over the process and its descendants, how many there were
    ("processes") and the owned memory of `pid` alone ("server")."""
    total: dict[str, float] = {"processes": 0.0, "server": 0.0}
    for member in process_tree(pid):
        try:
            status = status_mb(member)
        except (OSError, KeyError):
            continue  # ended meanwhile (a zombie's status has no Rss lines)
        total["processes"] += 1
        if member == pid:  # the server's own owned memory, apart from its children's
            total["server"] = status["RssAnon"] + status["RssShmem"]
        for name, mb in status.items():
            total[name] = total.get(name, 0.0) + mb
    return total


class Bounded(Protocol):
    """A structure that holds `entries` now and at most `bound`. (Not `__len__`: an empty
    structure must stay truthy where callers write `log or ServedLog()`.)"""

    @property
    def entries(self) -> int: ...

    @property
    def bound(self) -> int: ...


_tracked: dict[str, weakref.WeakSet[Bounded]] = {}
_tracked_lock = threading.Lock()


def track(name: str, structure: Bounded) -> None:
    """Name a bounded structure for the heap reports' per-structure sizes. A weak reference:
    tracking keeps nothing alive, and instances of one name are summed."""
    with _tracked_lock:
        _tracked.setdefault(name, weakref.WeakSet()).add(structure)


def tracked_sizes() -> dict[str, dict[str, int]]:
    """Each tracked name's entries and bound, summed over its live instances."""
    with _tracked_lock:
        groups = {name: list(members) for name, members in _tracked.items()}
    return {
        name: {
            "instances": len(members),
            "entries": sum(m.entries for m in members),
            "bound": sum(m.bound for m in members),
        }
        for name, members in sorted(groups.items())
        if members
    }


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


@functools.cache
def _library(name: str) -> ctypes.CDLL | None:
    """A C library by name, looked up once: `find_library` runs `ldconfig` in a child
    process, which a report every few seconds should not fork from a large server."""
    found = ctypes.util.find_library(name)
    return ctypes.CDLL(found) if found else None


def _libc() -> ctypes.CDLL | None:
    return _library("c")


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
    library = _library("sqlite3")
    used = getattr(library, "sqlite3_memory_used", None) if library is not None else None
    if used is None:
        return None
    used.restype = ctypes.c_int64
    return float(used()) / 2**20


def sqlite_connections() -> dict[str, int] | None:
    """The SQLite connections this process's shared engines hold open (`core/db.py`'s pools:
    idle in a pool or checked out by a thread), and how many engines: each keeps its page
    cache for its life, so their count times `sqlite_cache_kib` is what the caches can grow
    to (`sqlite_soft_heap_mib` bounds them together). None when no engine was made."""
    db = sys.modules.get("trifecta.core.db")
    if db is None:
        return None
    engines = [e for e in list(db._engines.values()) if db.is_sqlite(e)]
    pools = [e.pool for e in engines]
    idle = sum(int(getattr(p, "checkedin", lambda: 0)()) for p in pools)
    busy = sum(int(getattr(p, "checkedout", lambda: 0)()) for p in pools)
    return {"engines": len(engines), "open": idle + busy, "checked_out": busy}


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
            if o.is_mkldnn:
                # oneDNN's opaque tensors (the embedder's packed weights) expose no storage:
                # each owns its buffer, counted by its size under its own id.
                storages[-id(o)] = o.numel() * o.element_size()
            else:
                storage = o.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
            shapes[f"{tuple(o.shape)} {o.dtype}"] += 1
    return {
        "count": sum(shapes.values()),
        "storage_mb": sum(storages.values()) / 2**20,
        "shapes": shapes.most_common(top),
    }


class HeapReporter:
    """The debug report's thread: a baseline, then one JSON line every `interval_s`.
    Tracing starts at once and the baseline is taken `baseline_s` later, so a report's
    growth is what was made after that point and is still alive, net of what that point's
    heap freed meanwhile: a bounded cache turning over shows none (a capture started at that
    point, like memray's window, counts a full cache's turnover as growth)."""

    def __init__(
        self, path: Path, interval_s: float, frames: int = 8, baseline_s: float = 0.0
    ) -> None:
        self.path = path
        self.interval_s = interval_s
        self.frames = frames
        self.baseline_s = baseline_s
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
        if self.stop.wait(self.baseline_s):
            tracemalloc.stop()
            return
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
        # Objects counted before the heap is: other threads run meanwhile, and whatever was
        # counted is then in the snapshot too (a growing structure is never counted ahead
        # of its traced bytes).
        now = type_counts()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]  # not its own bookkeeping
        )
        grown = [d for d in snapshot.compare_to(baseline, "lineno") if d.size_diff > 0][:TOP]
        # The same growth by whole stack: a json or pydantic line says little without its
        # caller. Most recent frame last, as in a Python traceback.
        stacks = [d for d in snapshot.compare_to(baseline, "traceback") if d.size_diff > 0][:STACKS]
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
            "structures": tracked_sizes(),
        }


class SizesReporter:
    """The cheap report alone (no tracemalloc): one JSON line every `interval_s` of owned
    memory, SQLite's and glibc's figures and the tracked structures' sizes."""

    def __init__(self, path: Path, interval_s: float) -> None:
        self.path, self.interval_s = path, interval_s
        self.stop = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heap-sizes", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        self.stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        started = time.monotonic()
        while True:
            self.write(time.monotonic() - started)
            if self.stop.wait(self.interval_s):
                return

    def write(self, elapsed: float) -> None:
        stats = malloc_stats()
        line = {
            "seconds": round(elapsed, 1),
            "epoch": time.time(),
            "status_mb": status_mb(),
            "malloc": stats.model_dump() if stats else None,
            "sqlite_mb": sqlite_mb(),
            "sqlite_connections": sqlite_connections(),
            # Python's live blocks (pymalloc's and its large ones): its objects' growth
            # without tracemalloc's cost, beside glibc's figures.
            "python_blocks": sys.getallocatedblocks(),
            "structures": tracked_sizes(),
            "trims": asdict(TRIMS),
        }
        with self.path.open("a") as out:
            out.write(json.dumps(line) + "\n")


def _target(name: str, role: str) -> Path | None:
    """The file an environment variable names, `<file>.<role>` for a helper process."""
    value = os.environ.get(name)
    if not value:
        return None
    return Path(f"{value}.{role}") if role else Path(value)


def start_heap_report_if_asked(role: str = "") -> HeapReporter | MemrayWindow | None:
    """Start the debug report when `TRIFECTA_HEAP_REPORT` names a file, or memray's window
    when `TRIFECTA_HEAP_MEMRAY` does (both off by default: they slow a server); returns the
    reporter (`close()` ends it), or None. The sizes report starts too when
    `TRIFECTA_HEAP_SIZES` names a file (cheap; it runs as long as the process). A helper
    process passes its `role` and writes `<file>.<role>`."""
    interval = float(os.environ.get(INTERVAL_ENV, "30"))
    sizes = _target(SIZES_ENV, role)
    if sizes is not None:
        SizesReporter(sizes, interval).start()
    capture = _target(MEMRAY_ENV, role)
    if capture is not None:
        window = MemrayWindow(
            capture,
            float(os.environ.get(MEMRAY_AFTER_ENV, "120")),
            float(os.environ.get(MEMRAY_FOR_ENV, "300")),
        )
        window.start()
        return window
    target = _target(REPORT_ENV, role)
    if target is None:
        return None
    reporter = HeapReporter(target, interval, baseline_s=float(os.environ.get(BASELINE_ENV, "0")))
    reporter.start()
    return reporter
