"""The request log's INSERTs compiled once (`records.RowsInsert`) store what SQLAlchemy's own
INSERT of the same rows stores: every column, through its type (JSON, timezone-aware
DateTime, Boolean, Float), read back equal."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from trifecta.orchestrator.ledger import Charge, CostLedger
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.models import TaskRequest, TaskResult
from trifecta.orchestrator.records import SavedRows, prompt_hash
from trifecta.orchestrator.stack import Stack
from trifecta.orchestrator.tables import charges, requests


def _rows(served: TaskResult, request_id: str) -> SavedRows:
    result = served.model_copy(update={"id": request_id, "verified": False})
    at = dt.datetime(2026, 12, 7, 11, 42, 3, 123456, tzinfo=dt.UTC)
    row: dict[str, object] = {
        "id": result.id,
        "capsule_id": result.capsule_id,
        "run_id": "run-rows",
        "prompt": result.prompt,
        "prompt_hash": prompt_hash(result.prompt),
        "answer": 'it\'s "9" ✓',
        "route": result.route,
        "path": ["edge", "cognitive/small"],
        "environment": result.environment,
        "verified": False,
        "feedback": None,
        "difficulty": 3,
        "latency_ms": 12.5,
        "tokens": 17,
        "cost_usd": 1.25e-6,
        "detail": result.model_dump(mode="json"),
        "created_at": at,
    }
    charged = CostLedger.rows(
        request_id=result.id,
        capsule_id=result.capsule_id,
        capsule_kind="digital_twin",
        items=[
            Charge("cognitive", "inference", "qwen", "cpu", 0.25, 1.5),
            Charge("context", "inference", "context", None, 0.001, 0.2),
        ],
        at=at,
    )
    return row, charged


def _stored(stack: Stack, request_id: str) -> tuple[dict[str, object], list[dict[str, object]]]:
    with stack.engine.connect() as connection:
        row = connection.execute(select(requests).where(requests.c.id == request_id)).one()
        charged = connection.execute(
            select(charges).where(charges.c.request_id == request_id).order_by(charges.c.id)
        ).all()
    keep = {k: v for k, v in row._asdict().items() if k != "id"}
    keep["detail"] = {k: v for k, v in keep["detail"].items() if k != "id"}
    return keep, [
        {k: v for k, v in c._asdict().items() if k not in ("id", "request_id")} for c in charged
    ]


def test_compiled_inserts_store_what_sqlalchemys_insert_stores(stack: Stack) -> None:
    orchestrator = Orchestrator(stack.parts)
    capsule = stack.capsules.all()[0]
    served = orchestrator.serve(capsule.id, TaskRequest(prompt="p=4,q=5;p+q?"))
    records = orchestrator.records
    ours, theirs = _rows(served, "req-rows-compiled"), _rows(served, "req-rows-core")
    assert records._save_group([ours]) == [True]
    with stack.engine.begin() as connection:
        connection.execute(requests.insert(), [theirs[0]])
        connection.execute(charges.insert(), theirs[1])
    stored, reference = _stored(stack, "req-rows-compiled"), _stored(stack, "req-rows-core")
    assert stored == reference
    row, charged = stored
    logged = served.model_copy(update={"verified": False}).model_dump(mode="json")
    assert row["detail"] == {k: v for k, v in logged.items() if k != "id"}
    assert row["path"] == ["edge", "cognitive/small"]
    assert row["verified"] is False and row["feedback"] is None
    assert [c["accelerator"] for c in charged] == ["cpu", None]
    # The log's own reads parse the stored row back into the result.
    assert records.get("req-rows-compiled", capsule.id) == served.model_copy(
        update={"id": "req-rows-compiled", "verified": False}
    )
