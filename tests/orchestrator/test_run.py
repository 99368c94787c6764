"""`trifecta run`: the report's figures agree with the database, and a second run on the same
data directory starts from the context the first one learned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.orchestrator.conftest import StackFactory
from trifecta.orchestrator.records import RequestLog
from trifecta.orchestrator.run import context_sizes, run
from trifecta.orchestrator.workload import build_workload, capsule_mix


def test_report_agrees_with_the_database_and_learning_carries_over(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = make_stack()
    runs = tmp_path / "runs"
    first = run(stack, requests=60, seed=1, workers=2, out_dir=runs / "first", run_id="first")
    log = RequestLog(stack.engine, stack.parts.ledger)
    assert first.requests + first.failed == 60
    assert first.consistency.requests_logged == log.count(run_id="first") == first.requests
    assert first.consistency.ledger_usd == pytest.approx(first.consistency.request_usd)
    assert first.cost.total_usd == pytest.approx(first.consistency.request_usd)
    assert sum(first.cost.by_layer.values()) == pytest.approx(first.cost.total_usd)
    assert sum(r.requests for r in first.routes) == first.requests
    sizes = context_sizes(stack)
    assert first.context.memories_after == sum(v[2] for v in sizes.values())
    assert first.context.memories_after > first.context.memories_before == 0
    assert first.context.learned == first.requests
    for name in ("report.json", "results.jsonl", "latency.png", "accuracy.png", "cost.png"):
        assert (runs / "first" / name).stat().st_size > 0
    saved = json.loads((runs / "first" / "report.json").read_text())
    assert saved["requests"] == first.requests
    assert {k["kind"] for k in saved["cost"]["kinds"]} == {c.kind for c in stack.capsules.all()}

    second = run(stack, requests=40, seed=2, workers=2, out_dir=runs / "second", run_id="second")
    assert second.context.memories_before == first.context.memories_after
    assert second.context.bullets_before == first.context.bullets_after
    assert second.previous is not None and second.previous["accuracy"] == first.accuracy
    assert log.count() == first.requests + second.requests


def test_workload_follows_demand_and_light_share(make_stack: StackFactory) -> None:
    stack = make_stack()
    capsules = stack.capsules.all()
    items = build_workload(capsules, 400, seed=3)
    assert len(items) == 400 and {i.capsule_id for i in items} <= {c.id for c in capsules}
    assert build_workload(capsules, 400, seed=3) == items
    for capsule in capsules[:3]:
        mix = capsule_mix(capsule)
        assert sum(mix.values()) == pytest.approx(1.0)
        assert sum(w for g, w in mix.items() if g <= 2) == pytest.approx(capsule.demand.light_share)


def _cli(args: list[str], data: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIFECTA_")}
    env["TRIFECTA_DATA_DIR"] = str(data)
    return subprocess.run(
        [sys.executable, "-m", "trifecta.cli", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=280,
    )


@pytest.mark.slow
def test_trifecta_run_command_end_to_end(tmp_path: Path) -> None:
    done = _cli(["run", "--requests", "30", "--workers", "2"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Per layer" in done.stdout and "beside the playbook" in done.stdout
    (report,) = (tmp_path / "runs").glob("*/report.json")
    assert json.loads(report.read_text())["requests"] == 30
    # the per-request lines are in the run's log, not above the report on the terminal
    log = (report.parent / "run.log").read_text()
    assert "[info" in log and "generate" in log
    assert "[info" not in done.stderr and "[info" not in done.stdout
    assert f"log: {report.parent / 'run.log'}" in done.stdout.replace("\n", "")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--requests", "0"], "--requests"),
        (["--latency", "inference=fast"], "latency"),
        (["--fleet", "missing.yaml"], "fleet"),
        (["--down", "nowhere"], "environment"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], field: str) -> None:
    done = _cli(["run", *args], tmp_path)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and field in done.stderr
    assert len([line for line in lines if "error" in line.lower()]) == 1


def test_program_owning_capsules_draw_rule_queries() -> None:
    from trifecta.fleet.capsules import Capsule
    from trifecta.orchestrator.workload import _rule_book
    from trifecta.tensorlogic.program import parse_query

    twin = Capsule(id="wl-twin", name="t", kind="digital_twin", domain="wl", program="plant")
    items = build_workload([twin], 200, seed=1)
    rules = [i.task for i in items if i.task.kind == "rule"]
    assert 10 <= len(rules) <= 60  # about RULE_SHARE of them
    program = _rule_book().service("plant").program
    for task in rules:
        parse_query(program, task.prompt)  # every generated query is well formed
