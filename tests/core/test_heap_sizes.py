"""The sizes report (TRIFECTA_HEAP_SIZES): tracked structures' entries against their bounds,
summed by name, weakly held; the process-tree readers; and the learner process's heap set-up
(the same as `trifecta serve`'s, with its own report file)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from trifecta.core.heap_report import (
    INTERVAL_ENV,
    SIZES_ENV,
    SizesReporter,
    process_tree,
    track,
    tracked_sizes,
    tree_status_mb,
)


class Ring:
    def __init__(self, entries: int, bound: int) -> None:
        self.entries, self.bound = entries, bound


def test_tracked_structures_are_summed_by_name_and_not_kept_alive() -> None:
    a, b = Ring(3, 10), Ring(4, 10)
    track("test ring", a)
    track("test ring", b)
    assert tracked_sizes()["test ring"] == {"instances": 2, "entries": 7, "bound": 20}
    del b
    gc.collect()
    assert tracked_sizes()["test ring"] == {"instances": 1, "entries": 3, "bound": 10}
    del a
    gc.collect()
    assert "test ring" not in tracked_sizes()


def test_the_sizes_report_writes_a_line_per_interval(tmp_path: Path) -> None:
    kept = Ring(5, 8)
    track("test report ring", kept)
    reporter = SizesReporter(tmp_path / "sizes.jsonl", interval_s=0.1)
    reporter.start()
    time.sleep(0.5)
    reporter.close()
    lines = [json.loads(x) for x in (tmp_path / "sizes.jsonl").read_text().splitlines()]
    assert len(lines) >= 2
    assert lines[-1]["structures"]["test report ring"]["entries"] == 5
    assert lines[-1]["status_mb"]["RssAnon"] > 0
    assert set(lines[-1]["trims"]) == {"trims", "seconds", "returned_mb"}  # the trimmer's
    assert lines[-1]["python_blocks"] > 10_000  # a test session's live Python blocks


def test_the_tree_sums_a_child_process() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; b = bytearray(64 << 20); sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tree = tree_status_mb(os.getpid())
            if child.pid in process_tree(os.getpid()) and tree["RssAnon"] - tree["server"] > 60:
                break
            time.sleep(0.1)
        assert tree["processes"] >= 2
        assert tree["RssAnon"] - tree["server"] > 60  # the child's 64 MB counted in the sum
    finally:
        child.communicate(b"")


def test_the_learner_process_sets_up_its_heap_as_the_server_does(tmp_path: Path) -> None:
    sizes = tmp_path / "sizes.jsonl"
    script = (
        "import gc, json, os, threading, time\n"
        "from trifecta.context import learner\n"
        "learner._start_heap()\n"
        "learner._serve_heap()\n"
        "time.sleep(0.5)\n"
        "names = [t.name for t in threading.enumerate()]\n"
        "mkl = os.environ.get('MKL_DISABLE_FAST_MM')\n"
        "print(json.dumps({'frozen': gc.get_freeze_count(), 'threads': names, 'mkl': mkl}))\n"
    )
    env = os.environ | {SIZES_ENV: str(sizes), INTERVAL_ENV: "0.2"}
    env.pop("MKL_DISABLE_FAST_MM", None)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["frozen"] > 0  # the start-up heap frozen
    assert result["mkl"] == "1"  # the native caches' bounds, set when run alone
    assert "malloc-trim" in result["threads"] and "heap-sizes" in result["threads"]
    assert not sizes.exists()  # the learner writes its own file, not the server's
    lines = (tmp_path / "sizes.jsonl.learner").read_text().splitlines()
    assert json.loads(lines[0])["malloc"]["arenas"] <= 2  # its arenas capped


def test_the_sizes_report_counts_the_sqlite_connections_held_open(tmp_path: Path) -> None:
    from trifecta.core.db import dispose_engines, get_engine
    from trifecta.core.heap_report import sqlite_connections

    dispose_engines()
    engine = get_engine(f"sqlite:///{tmp_path / 'a.db'}")
    held = [engine.connect() for _ in range(3)]
    try:
        assert sqlite_connections() == {"engines": 1, "open": 3, "checked_out": 3}
    finally:
        for connection in held:
            connection.close()
    assert sqlite_connections() == {"engines": 1, "open": 3, "checked_out": 0}  # pooled
    dispose_engines()
    assert sqlite_connections() == {"engines": 0, "open": 0, "checked_out": 0}


def blocks(count: int) -> list[bytearray]:
    return [bytearray(1000) for _ in range(count)]  # the line both lists are made on


def test_the_heap_report_can_take_its_baseline_later(tmp_path: Path) -> None:
    from trifecta.core.heap_report import HeapReporter

    report = tmp_path / "heap.jsonl"
    reporter = HeapReporter(report, interval_s=0.2, baseline_s=1.0)
    reporter.start()
    early = blocks(3000)  # traced, but made before the baseline: not growth
    assert not reporter.ready.is_set()
    # Counting every object of a test session takes seconds on a loaded machine.
    assert reporter.ready.wait(60)
    late = blocks(3000)
    deadline = time.monotonic() + 60
    grown: dict[str, float] = {}
    while time.monotonic() < deadline:
        text = report.read_text() if report.exists() else ""
        lines = [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]
        if lines:
            grown = {row["where"]: row["kb"] for row in lines[-1]["python_growth"]}
            if any("test_heap_sizes.py" in where for where in grown):
                break
        time.sleep(0.1)
    reporter.close()
    # The blocks' line; the test's own few small objects (the polling loop's, 0.2 KB) may be
    # listed too, from another line of this file.
    line = [kb for where, kb in grown.items() if "test_heap_sizes.py" in where and kb > 100]
    # The 3 MB made after the baseline, not the 6 MB the line made since tracing began.
    assert len(line) == 1 and 2800 < line[0] < 4500
    del early, late
