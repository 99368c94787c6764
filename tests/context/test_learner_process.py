"""The learning worker in a process of its own: it learns what the serving process queued,
the serving process's live view catches up by reading only newer rows, a killed learner is
restarted with nothing lost, and a killed serving process leaves no learner behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.context.conftest import ChangesSpy, ServiceFactory, register_capsules
from tests.context.submitter import trajectory
from tests.context.test_learn_queue import REPO, bullet_counts, seed_bullet
from trifecta.context.facade import ContextService
from trifecta.context.learn_worker import LearnWorker
from trifecta.context.learner import import_path
from trifecta.context.learner_process import LearnerProcess
from trifecta.context.models import RetrieveRequest
from trifecta.context.settings import ContextSettings
from trifecta.core.embeddings import MiniLMEmbedder, get_embedder


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


def wait_gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def process_service(url: str) -> ContextService:
    register_capsules(url)
    settings = ContextSettings(tenancy_ttl_s=0, learning_process=True)
    # The query embedder is this process's MiniLM; the learner loads its own.
    return ContextService(
        control_url=url,
        embedder=get_embedder,
        learning_embedder=MiniLMEmbedder,
        settings=settings,
        redis_url="",
    )


def test_parts_that_cannot_cross_a_process_keep_learning_in_a_thread(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    assert isinstance(make_service(sqlite_url).learner, LearnWorker)  # an embedder object
    assert isinstance(process_service(sqlite_url).learner, LearnerProcess)
    off = ContextSettings(learning_process=False)
    assert isinstance(ContextService(control_url=sqlite_url, settings=off).learner, LearnWorker)
    assert import_path(MiniLMEmbedder) == "trifecta.core.embeddings:MiniLMEmbedder"
    assert import_path(lambda: None) is None and import_path(get_embedder()) is None


@pytest.mark.slow
def test_the_learner_process_learns_survives_kill_9_and_stops_with_the_service(
    sqlite_url: str, spy_changes_since: ChangesSpy
) -> None:
    service = process_service(sqlite_url)
    assert isinstance(service.learner, LearnerProcess)
    bullet = seed_bullet(service)
    request = RetrieveRequest(query="t=1,p=1,r=3;t+p?", k_memories=3)
    service.retrieve("twin-a", request)  # this process now holds a live view of the domain
    held = service.views.get("plant", lambda _d: service.router.store_for("plant"), 0).version
    store = service.router.store_for("plant")
    asked = spy_changes_since(store)
    for i in range(10):
        service.submit(trajectory(i, bullet))
    assert service.drain(timeout=180)
    first = service.learner.pid
    assert first is not None and first != os.getpid()
    # The learner's rows reached this process's view as reads of newer rows, never a reload.
    assert asked and min(asked) >= held > 0
    got = service.retrieve("twin-a", request)
    assert got.version == store.version("plant")
    assert "traj-kill-00001" in {m.memory.source.trajectory_id for m in got.memories}

    os.kill(first, signal.SIGKILL)  # the supervisor restarts it; queued rows wait meanwhile
    for i in range(10, 20):
        service.submit(trajectory(i, bullet))
    assert service.drain(timeout=180)
    second = service.learner.pid
    assert second is not None and second != first
    rows = service.learn_queue("twin-a")
    assert [r.state for r in rows] == ["done"] * 20
    assert sum(bullet_counts(sqlite_url, bullet)) == 20  # each learned exactly once
    assert service.learning_stats()["learner_restarts"] >= 1

    service.close()
    assert wait_gone(second, within_s=20), "the learner outlived its service's close"


@pytest.mark.slow
def test_a_killed_serving_process_leaves_no_learner_and_loses_nothing(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    first = make_service(sqlite_url)
    bullet = seed_bullet(first)
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.context.submitter", sqlite_url, bullet, "5000", "process"],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    learner, acked = None, set()
    deadline = time.monotonic() + 240
    try:
        for line in parent.stdout:
            if line.startswith("learner "):
                learner = int(line.split()[1])
            elif line.startswith("ack "):
                acked.add(line.split()[1])
            if len(acked) >= 40 or time.monotonic() > deadline:
                break
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
    assert learner is not None and len(acked) >= 40, "the parent did not get going in time"
    assert wait_gone(learner, within_s=10), "the learner outlived its parent"
    survivor = make_service(sqlite_url)
    assert survivor.drain(timeout=120)
    rows = {r.trajectory_id: r for r in survivor.learn_queue("twin-a")}
    assert acked <= set(rows) and {r.state for r in rows.values()} == {"done"}
    assert sum(bullet_counts(sqlite_url, bullet)) == len(rows)
    survivor.close()
