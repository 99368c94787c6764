"""Run locust headless against a live server and read back what it recorded.

locust runs in its own process (it monkey-patches the standard library with gevent on
import, which must not happen inside pytest or a benchmark's process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel

from tests.reliability.traffic import Acks

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
REPO = Path(__file__).resolve().parents[2]


class Record(BaseModel):
    """One request as the locust user saw it (`status` 0: no answer)."""

    kind: Literal["task", "feedback", "healthz"]
    scheduled: float  # epoch seconds the request was due
    done: float
    status: int
    id: str | None = None
    capsule: str | None = None
    learned: bool | None = None
    verdict: bool | None = None
    sent: float | None = None  # epoch seconds the request left (later than `scheduled` when
    # the user's previous request was slow)
    hops: list[tuple[str, str, float]] = []  # (layer, model, ms) as the server reported them

    def breakdown(self) -> str:
        """Where a slow task's time went: waiting to be sent, each hop, the rest."""
        waited = (self.sent - self.scheduled) if self.sent is not None else 0.0
        total = self.done - self.scheduled
        hops = sum(ms for _, _, ms in self.hops) / 1000
        parts = [f"{layer}/{model} {ms / 1000:.2f}" for layer, model, ms in self.hops]
        return (
            f"{total:.1f} s: waited {waited:.1f} s to be sent; hops {', '.join(parts)}; "
            f"outside the hops {total - waited - hops:.1f} s"
        )


@dataclass
class LoadRun:
    """What one locust run offered, what the server answered and what it acknowledged."""

    rate: float  # offered requests per second, all users together
    seconds: float
    records: list[Record]
    acks: Acks

    def of(self, kind: str) -> list[Record]:
        return [r for r in self.records if r.kind == kind]

    def latencies_ms(self, kind: str = "task") -> np.ndarray:
        """Completion minus scheduled arrival, in ms, of every request of this kind."""
        return np.array([(r.done - r.scheduled) * 1000 for r in self.of(kind)])

    def server_errors(self) -> int:
        """5xx answers and requests that got no answer at all."""
        return sum(1 for r in self.records if r.status >= 500 or r.status == 0)

    def achieved_rate(self, kind: str = "task") -> float:
        rows = self.of(kind)
        if not rows:
            return 0.0
        return len(rows) / (max(r.done for r in rows) - min(r.scheduled for r in rows))


def run_locust(
    url: str,
    keys: dict[str, str],
    *,
    rate: float,
    seconds: float,
    users: int,
    work: Path,
    path: str = "tasks",
) -> LoadRun:
    """`users` locust users (capsules taken in turn from `keys`) at `rate` requests per
    second together for `seconds`, against `url`."""
    work.mkdir(parents=True, exist_ok=True)
    records_path = work / f"records-{path}.jsonl"
    env = dict(os.environ)
    env.update(
        LOAD_KEYS=json.dumps(keys),
        LOAD_RATE=str(rate / users),
        LOAD_RECORDS=str(records_path),
        LOAD_PATH=path,
    )
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", url, "-u", str(users), "-r", str(users), "-t", f"{seconds:g}s",
        "--stop-timeout", "60", "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    with (work / f"locust-{path}.log").open("w") as log:
        subprocess.run(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            timeout=seconds + 180, check=False,
        )  # fmt: skip
    if not records_path.exists():
        raise RuntimeError(f"locust wrote no records; see {work / f'locust-{path}.log'}")
    records = [Record.model_validate_json(line) for line in records_path.read_text().splitlines()]
    acks = Acks()
    for r in records:
        acks.statuses[r.status] += 1
        if r.kind == "task" and r.status == 201 and r.id is not None:
            acks.tasks[r.id] = r.capsule or ""
            if r.learned:
                acks.learned.add(r.id)
        elif r.kind == "feedback" and r.status == 200 and r.id is not None:
            acks.feedback[r.id] = bool(r.verdict)
    return LoadRun(rate=rate, seconds=seconds, records=records, acks=acks)
