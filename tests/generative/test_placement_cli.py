"""`trifecta generative placement|expand`: tables, JSON round trip, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import run_cli
from trifecta.generative.placement import Placement

LOADS = "900,50,400,60,300,70,200,20,650,15,120,35"


def test_placement_then_expand_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "placement.json"
    code, stdout, stderr = run_cli(
        ["generative", "placement", "--loads", LOADS, "--nodes", "4", "--slots-per-node", "4",
         "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0, stderr
    placement = Placement.model_validate_json(out.read_text())
    assert placement.cluster.slots == [4] * 4 and placement.replicas().min() >= 1
    assert "max/mean load" in stdout and "round-robin" in stdout
    grown = tmp_path / "grown.json"
    code, stdout, stderr = run_cli(
        ["generative", "expand", "--placement", str(out), "--loads", LOADS, "--add", "1",
         "--out", str(grown)],
        capsys,
    )  # fmt: skip
    assert code == 0, stderr
    assert "from-scratch repack" in stdout
    assert "answer:" in stdout and "MILP" in stdout  # which answer was kept, and why
    assert len(json.loads(grown.read_text())["nodes"]) == 5


def test_a_trace_file_gives_the_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.txt"
    trace.write_text("0 1 1 2 2 2 3 3 3 3\n" * 20)
    code, stdout, stderr = run_cli(
        ["generative", "placement", "--trace", str(trace), "--experts", "4", "--nodes", "2",
         "--memory-bytes", "3000", "--expert-bytes", "1000"],
        capsys,
    )  # fmt: skip
    assert code == 0, stderr
    assert "max/mean load 1.0000" in stdout  # 10:20:30:40 packs as 50 / 50


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--loads", "1,2,x", "--nodes", "2"], "loads:"),
        (["--loads", "1,2,3", "--nodes", "2", "--slots-per-node", "1"], "slots_per_node:"),
        (["--loads", "1,2,3", "--trace", "t.txt"], "loads:"),
        (["--loads", "1,2,3", "--method", "exact"], "method:"),
        (["--loads", "1,2,3", "--memory-bytes", "10"], "memory_bytes:"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(
    argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = run_cli(["generative", "placement", *argv], capsys)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and field in stderr


def test_expand_refuses_removing_every_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "placement.json"
    run_cli(
        ["generative", "placement", "--loads", "1,2,3,4", "--nodes", "2", "--out", str(out)], capsys
    )
    code, _, stderr = run_cli(
        ["generative", "expand", "--placement", str(out), "--loads", "1,2,3,4", "--remove", "0,1"],
        capsys,
    )
    assert code == 2 and "remove:" in stderr
    code, _, stderr = run_cli(
        ["generative", "expand", "--placement", str(out), "--loads", "1,2,3,4", "--method", "x"],
        capsys,
    )
    assert code == 2 and "method:" in stderr
