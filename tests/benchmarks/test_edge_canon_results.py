"""The Canon benchmark's goals and the results file `benchmarks/goals.py` reads, built from
the figures a run computes (the run itself trains the edge model twice: minutes of CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from benchmarks._report import BenchmarkResult
from benchmarks.edge_canon import answers, canon_goals

from benchmarks import _report


def grades(lookups: int, sums: int, per_grade: int = 200) -> dict[int, list[float]]:
    return {1: answers(lookups, per_grade), 2: answers(sums, per_grade)}


def pairs(with_canon: float, without: float, count: int = 60) -> np.ndarray:
    """(count, 2) seconds per token of (with, without) the Canon layer, as `decode_pairs`
    gives them: neighbouring runs with a little noise on each."""
    rng = np.random.default_rng(0)
    jitter = rng.uniform(0.99, 1.01, size=(count, 2))
    return np.array([with_canon, without]) * jitter


def test_the_goals_from_the_last_full_runs_counts() -> None:
    # the counts of the BENCHMARKS.md section: 99.5% / 98.5% with Canon, 29% look-ups without
    goals = canon_goals(
        {4: grades(199, 197), 0: grades(58, 170)},
        pairs(1 / 4751.0, 1 / 5036.0),
    )
    light, gain, speed = goals
    assert light.figure == pytest.approx(0.99) and light.low is not None and light.low > 0.95
    assert light.met
    assert gain.figure == pytest.approx(70.5) and gain.unit == " pts"
    assert gain.low is not None and gain.high is not None
    assert 60 < gain.low < gain.figure < gain.high
    assert gain.met
    assert speed.figure == pytest.approx(4751 / 5036, rel=0.01)  # tokens/s = 1 / seconds
    assert speed.direction == "at least" and speed.goal == 0.9 and speed.met


def test_no_gain_is_not_met() -> None:
    goals = canon_goals({4: grades(60, 170), 0: grades(58, 170)}, pairs(1.0, 1.0, count=5))
    assert not goals[0].met and not goals[1].met and goals[2].met


def test_the_results_file_is_what_goals_py_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_report, "RESULTS_DIR", tmp_path)
    goals = canon_goals({4: grades(199, 197), 0: grades(58, 170)}, pairs(2.0, 2.0, count=9))
    path = _report.write_results("edge_canon", "python benchmarks/edge_canon.py", goals)
    result = BenchmarkResult.model_validate_json(path.read_text())
    assert path == tmp_path / "edge_canon.json"
    assert result.name == "edge_canon" and result.goals == goals
