"""Writes against a live `trifecta serve` and the audit of what it acknowledged.

`Writers` sends tasks (each task's learning write is durably queued before the 201) and
client feedback on some of them from several threads, one capsule key each, and records
exactly what was acknowledged: a 201 task, a 200 feedback. Anything else (a 5xx, a dropped
connection while the server is killed or its database restarts) is counted, not
acknowledged. `audit` then reads the database itself: every acknowledged task is in the
request log, every acknowledged learning write is in the learn queue and learned from after
the drain, every acknowledged feedback is recorded."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
from sqlalchemy import create_engine, inspect, select

from trifecta.context import tables as context_tables
from trifecta.core.tasks import iter_tasks
from trifecta.orchestrator import tables as loop_tables

# Mixed capsules of the shipped fleet: digital twins, research, sovereign (EU).
CAPSULES = [
    "dt-energy-0000",
    "dt-water-0007",
    "dt-telecom-0005",
    "research-climate-0008",
    "sov-eu-energy-0012",
    "sov-eu-healthcare-0010",
]


@dataclass
class Acks:
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> capsule
    learned: set[str] = field(default_factory=set)  # task ids whose learning write was queued
    feedback: dict[str, bool] = field(default_factory=dict)  # task id -> verdict sent
    statuses: Counter[int] = field(default_factory=Counter)  # 0: no answer (transport error)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Writers:
    """Threads that write until stopped; `acks` holds what the server acknowledged."""

    def __init__(self, base_url: str, keys: dict[str, str], *, threads: int, seed: int = 0):
        self.base_url = base_url
        self.keys = keys
        self.acks = Acks()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._write, args=(i, seed), daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def wait_for(self, tasks: int, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acks.tasks) < tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.acks.tasks)} tasks acknowledged")
            time.sleep(0.05)

    def _record(self, status: int) -> None:
        with self.acks.lock:
            self.acks.statuses[status] += 1

    def _write(self, index: int, seed: int) -> None:
        capsules = itertools.cycle(CAPSULES[index % len(CAPSULES) :] + CAPSULES)
        tasks = iter_tasks(seed=seed * 100 + index, split="heldout")
        with httpx.Client(base_url=self.base_url, timeout=30) as http:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                capsule = next(capsules)
                headers = {"Authorization": f"Bearer {self.keys[capsule]}"}
                try:
                    made = http.post(
                        f"/v1/capsules/{capsule}/tasks",
                        json={"prompt": next(tasks).prompt},
                        headers=headers,
                    )
                except httpx.TransportError:
                    self._record(0)
                    time.sleep(0.1)
                    continue
                self._record(made.status_code)
                if made.status_code != 201:
                    time.sleep(0.05)
                    continue
                task = made.json()
                with self.acks.lock:
                    self.acks.tasks[task["id"]] = capsule
                    if task["learned"]:
                        self.acks.learned.add(task["id"])
                if n % 3:
                    continue  # feedback on every third task
                verdict = n % 2 == 0
                try:
                    answered = http.post(
                        f"/v1/capsules/{capsule}/tasks/{task['id']}/feedback",
                        json={"success": verdict},
                        headers=headers,
                    )
                except httpx.TransportError:
                    self._record(0)
                    continue
                self._record(answered.status_code)
                if answered.status_code == 200:
                    with self.acks.lock:
                        self.acks.feedback[task["id"]] = verdict


@dataclass
class Audit:
    missing_tasks: list[str]
    missing_learning: list[str]
    unlearned: list[str]
    missing_feedback: list[str]
    queue_rows: int

    @property
    def clean(self) -> bool:
        return not (
            self.missing_tasks or self.missing_learning or self.unlearned or self.missing_feedback
        )


def audit(database_url: str, acks: Acks) -> Audit:
    """Compare what the server acknowledged with the rows in its databases: the request log
    in the control database, the learn queue in each domain's shard (the shard map says
    where; the embedded stack homes shards in per-environment SQLite files)."""
    requests, queue = loop_tables.requests.c, context_tables.learn_queue.c
    shards = context_tables.shards.c
    control = create_engine(database_url)
    try:
        with control.connect() as conn:
            logged = dict(
                conn.execute(
                    select(requests.id, requests.feedback).where(requests.id.in_(acks.tasks))
                ).all()
            )
            shard_urls = {database_url, *conn.execute(select(shards.url)).scalars()}
    finally:
        control.dispose()
    queued: dict[str, str] = {}
    for url in sorted(shard_urls):
        shard = create_engine(url)
        try:
            with shard.connect() as conn:
                if not inspect(conn).has_table(context_tables.learn_queue.name):
                    continue
                queued |= dict(
                    conn.execute(
                        select(queue.trajectory_id, queue.state).where(
                            queue.trajectory_id.in_(acks.learned)
                        )
                    ).all()
                )
        finally:
            shard.dispose()
    return Audit(
        missing_tasks=sorted(set(acks.tasks) - set(logged)),
        missing_learning=sorted(acks.learned - set(queued)),
        unlearned=sorted(t for t, state in queued.items() if state != "done"),
        missing_feedback=sorted(t for t, v in acks.feedback.items() if logged.get(t) is not v),
        queue_rows=len(queued),
    )


def drained_audit(database_url: str, acks: Acks, timeout: float = 120.0) -> Audit:
    """The audit once the server's learning worker has learned every acknowledged write (or
    `timeout` passed: then the audit shows what is still pending)."""
    deadline = time.monotonic() + timeout
    while True:
        result = audit(database_url, acks)
        if not result.unlearned or time.monotonic() > deadline:
            return result
        time.sleep(0.5)
