"""memray's native-stack window over a stretch of a server's life, and what it kept.

Started by `core/heap_report.start_heap_report_if_asked` when `TRIFECTA_HEAP_MEMRAY` names a
file (a debugging run only: memray is a dev dependency and slows every allocation). The
capture's allocations still held at points of the window (`memray_growth`) say, by library
and application line, what a stretch of steady serving kept: glibc's heap, not Python's only.
"""

from __future__ import annotations

import threading
from pathlib import Path

from pydantic import BaseModel


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
