"""The locust users of the load test: each capsule's own key, tasks on a fixed schedule.

Run by `tests.reliability.load.run_locust` as `locust --headless`; configured through the
environment (`LOAD_KEYS`: a JSON {capsule: key}, `LOAD_RATE`: each user's requests per
second, `LOAD_RECORDS`: where to write one JSON line per request, `LOAD_PATH`: `tasks` or
`healthz`).

Each user sends on its own schedule (`start + k / rate`), and a request's latency is taken
from its scheduled time, not from when it was sent: a server that falls behind delays every
later request of that user, and that delay counts (no coordinated omission). Every fourth
acknowledged task gets the client's feedback.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from typing import Any

import gevent
from locust import HttpUser, constant, events, task

from trifecta.core.tasks import iter_tasks

KEYS: dict[str, str] = json.loads(os.environ.get("LOAD_KEYS", "{}"))
RATE = float(os.environ.get("LOAD_RATE", "1"))
PATH = os.environ.get("LOAD_PATH", "tasks")
RECORDS: list[dict[str, Any]] = []
_users = itertools.count()


class Capsule(HttpUser):
    wait_time = constant(0)  # the schedule below paces each user

    def on_start(self) -> None:
        index = next(_users)
        self.capsule = sorted(KEYS)[index % len(KEYS)]
        self.headers = {"Authorization": f"Bearer {KEYS[self.capsule]}"}
        self.prompts = iter_tasks(seed=index, split="heldout")
        self.sent = 0
        self.interval = 1.0 / RATE
        # Users start spread over one interval so arrivals are not in lockstep.
        self.next_at = time.time() + random.Random(index).uniform(0, self.interval)

    def _wait_turn(self) -> float:
        scheduled = self.next_at
        self.next_at += self.interval
        delay = scheduled - time.time()
        if delay > 0:
            gevent.sleep(delay)
        return scheduled

    def _record(self, kind: str, scheduled: float, status: int, **extra: Any) -> None:
        RECORDS.append(
            {"kind": kind, "scheduled": scheduled, "done": time.time(), "status": status} | extra
        )

    @task
    def serve(self) -> None:
        scheduled = self._wait_turn()
        if PATH == "healthz":
            with self.client.get("/healthz", catch_response=True) as got:
                self._record("healthz", scheduled, got.status_code)
            return
        sent = time.time()
        with self.client.post(
            f"/v1/capsules/{self.capsule}/tasks",
            json={"prompt": next(self.prompts).prompt},
            headers=self.headers,
            name="/v1/capsules/[id]/tasks",
            catch_response=True,
        ) as made:
            body = made.json() if made.status_code == 201 else {}
            self._record(
                "task",
                scheduled,
                made.status_code,
                id=body.get("id"),
                capsule=self.capsule,
                learned=body.get("learned"),
                sent=sent,
                hops=[(h["layer"], h["model"], h["latency_ms"]) for h in body.get("hops", [])],
            )
        self.sent += 1
        if made.status_code != 201 or self.sent % 4:
            return
        verdict = self.sent % 8 == 0
        with self.client.post(
            f"/v1/capsules/{self.capsule}/tasks/{body['id']}/feedback",
            json={"success": verdict},
            headers=self.headers,
            name="/v1/capsules/[id]/tasks/[id]/feedback",
            catch_response=True,
        ) as answered:
            self._record(
                "feedback", time.time(), answered.status_code, id=body["id"], verdict=verdict
            )


@events.quitting.add_listener
def _write_records(**_kwargs: Any) -> None:
    path = os.environ.get("LOAD_RECORDS")
    if path:
        with open(path, "w") as out:
            for record in RECORDS:
                out.write(json.dumps(record) + "\n")
