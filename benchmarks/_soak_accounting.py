"""What a soak's server held, by owner: its bounded structures' entries over time (the
server's sizes report, `TRIFECTA_HEAP_SIZES` in core/heap_report.py), the context service's
caches (its /context/health counters, polled), and the context rows the workload wrote
(counted in the shard databases at the end of the load). The soak benchmark reads these to
tell a cache filling to its bound from the product's own data and from a leak."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path

import httpx

EMBEDDING_BYTES = 384 * 4  # a memory's row of the in-memory index (MiniLM, float32)


def read_lines(path: Path) -> list[dict[str, object]]:
    """A JSON-lines report's whole lines (the writer may be half-way through the next)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


class HealthPoller:
    """Reads the context service's counters (/context/health: the result cache's entries,
    the standing searches held) every `every_s` seconds on a thread of its own."""

    def __init__(self, url: str, admin_key: str, every_s: float = 60.0) -> None:
        self.url, self.every_s = url, every_s
        self.headers = {"Authorization": f"Bearer {admin_key}"}
        self.rows: list[dict[str, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                health = httpx.get(
                    self.url + "/context/health", headers=self.headers, timeout=30
                ).json()
                self.rows.append({"epoch": time.time(), **health["cache_stats"]})
            except (httpx.HTTPError, KeyError, ValueError):
                pass  # a slow answer under load: the next poll
            if self._done.wait(self.every_s):
                return

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()


def context_rows(data_dir: Path, control_db: Path) -> dict[str, float]:
    """Memories and bullets the workload wrote, summed over every context database of the
    run, and those databases' size on disk (MB, with their write-ahead logs)."""
    totals = {"memories": 0.0, "bullets": 0.0, "db_mb": 0.0, "databases": 0.0}
    for db in [control_db, *sorted(data_dir.rglob("context.db"))]:
        if not db.exists():
            continue
        totals["databases"] += 1
        totals["db_mb"] += (
            sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file()) / 2**20
        )
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            for table, name in (("context_memories", "memories"), ("context_bullets", "bullets")):
                # A database without the context schema (the control database) has none.
                with contextlib.suppress(sqlite3.OperationalError):
                    (count,) = connection.execute(f"select count(*) from {table}").fetchone()
                    totals[name] += count
    return totals


def at_marks(lines: list[dict[str, object]], starts: list[float]) -> list[dict[str, object] | None]:
    """The first sizes line at or after each epoch time (None past the last line)."""
    picked: list[dict[str, object] | None] = []
    for start in starts:
        later = [line for line in lines if float(line["epoch"]) >= start]  # type: ignore[arg-type]
        picked.append(later[0] if later else None)
    return picked


def structure_table(
    lines: list[dict[str, object]], marks: list[float], labels: list[str]
) -> list[str]:
    """Markdown: each tracked structure's entries / bound, SQLite's own memory and glibc's
    in-use bytes at each mark."""
    picked = at_marks(lines, marks)
    names = sorted({name for line in lines for name in line["structures"]})  # type: ignore[attr-defined]
    rows = [
        "| structure | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for name in names:
        cells = []
        for line in picked:
            size = line["structures"].get(name) if line else None  # type: ignore[attr-defined]
            cells.append(f"{size['entries']:,} / {size['bound']:,}" if size else "-")
        rows.append(f"| {name}: entries / bound | " + " | ".join(cells) + " |")
    sqlite = [f"{line['sqlite_mb']:.1f}" if line and line["sqlite_mb"] is not None else "-" for line in picked]  # fmt: skip
    rows.append("| SQLite's own memory (MB) | " + " | ".join(sqlite) + " |")
    in_use = [f"{line['malloc']['in_use_mb']:.0f}" if line and line["malloc"] else "-" for line in picked]  # type: ignore[index]  # fmt: skip
    rows.append("| glibc's bytes in use (MB) | " + " | ".join(in_use) + " |")
    trims = [trim_cell(line) for line in picked]
    rows.append(
        "| glibc trims so far: count, ms each (mean), MB given back (summed) | "
        + " | ".join(trims)
        + " |"
    )
    return rows


def trim_cell(line: dict[str, object] | None) -> str:
    """The trimmer's counters in a sizes line (`core/heap.py` TRIMS), or "-"."""
    trims = line.get("trims") if line else None
    if not isinstance(trims, dict) or not trims["trims"]:
        return "-"
    each_ms = 1000 * trims["seconds"] / trims["trims"]
    return f"{trims['trims']}, {each_ms:.1f}, {trims['returned_mb']:.0f}"


def health_row(rows: list[dict[str, float]], marks: list[float], field: str) -> list[str]:
    """A context counter at each mark (the first poll at or after it)."""
    cells = []
    for start in marks:
        later = [r for r in rows if r["epoch"] >= start]
        cells.append(f"{later[0][field]:,.0f}" if later and field in later[0] else "-")
    return cells
