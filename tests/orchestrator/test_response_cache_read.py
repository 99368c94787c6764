"""The response cache's read (`RequestLog.cached_answer`), on SQLite and Postgres: the latest
correct answer to exactly the prompt asked, never another prompt's answer that shares its
hash, and the client's verdict over the verifier's."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from trifecta.core.db import get_engine, transaction
from trifecta.orchestrator.ledger import CostLedger
from trifecta.orchestrator.models import Cost, TaskResult
from trifecta.orchestrator.records import RequestLog, prompt_hash
from trifecta.orchestrator.tables import requests


def _result(request_id: str, prompt: str, answer: str, verified: bool | None) -> TaskResult:
    return TaskResult(
        id=request_id,
        capsule_id="twin-1",
        prompt=prompt,
        answer=answer,
        route="edge",
        path=["edge"],
        environment="edge-eu",
        verified=verified,
        escalated=False,
        hops=[],
        context=None,
        cost=Cost(usd=0.0, accelerator_seconds=0.0, by_layer={}),
        latency_ms=1.0,
        learned=False,
    )


def _save(log: RequestLog, result: TaskResult) -> None:
    log.save(result, capsule_kind="twin", charges=[], difficulty=1, run_id=None)


def test_the_latest_correct_answer_to_exactly_the_prompt(db_url: str) -> None:
    engine = get_engine(db_url)
    log = RequestLog(engine, CostLedger(engine))
    assert log.cached_answer("twin-1", "3+4=") is None
    _save(log, _result("r1", "3+4=", "7", verified=True))
    _save(log, _result("r2", "3+4=", "8", verified=False))  # wrong: never an answer
    assert log.cached_answer("twin-1", "3+4=") == ("7", "r1")
    _save(log, _result("r3", "3+4=", "7 ", verified=True))
    assert log.cached_answer("twin-1", "3+4=") == ("7 ", "r3")  # the latest
    assert log.cached_answer("twin-2", "3+4=") is None  # another capsule's
    log.set_feedback("r3", "twin-1", success=False)  # the client overrules the verifier
    assert log.cached_answer("twin-1", "3+4=") == ("7", "r1")
    # a prompt whose stored hash collides with this one's: its answer is not this prompt's
    _save(log, _result("r4", "5+5=", "10", verified=True))
    with transaction(engine) as session:
        session.execute(
            update(requests).where(requests.c.id == "r4").values(prompt_hash=prompt_hash("3+4="))
        )
    assert log.cached_answer("twin-1", "3+4=") == ("7", "r1")


@pytest.mark.parametrize("prompt", ["", "x" * 2000, "naïve 'quoted' ?"])
def test_any_prompt_text_reads_back(sqlite_url: str, prompt: str) -> None:
    engine = get_engine(sqlite_url)
    log = RequestLog(engine, CostLedger(engine))
    _save(log, _result("r1", prompt, "ok", verified=True))
    assert log.cached_answer("twin-1", prompt) == ("ok", "r1")
