"""Shared by the benchmark scripts: the machine they ran on, bootstrap intervals, goals, and
writing a result section into BENCHMARKS.md plus a machine-readable `results/<name>.json`
(read by `benchmarks/goals.py`, which `make bench` runs last)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_section(name: str, markdown: str) -> None:
    """Replace the text between `<!-- section:NAME -->` and `<!-- /section:NAME -->`
    (appending the markers if the file lacks them)."""
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    block = f"{start}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _m: block, text)
        if pattern.search(text)
        else text.rstrip() + f"\n\n{block}\n"
    )
    BENCHMARKS_MD.write_text(text)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, its core count, and its SIMD level."""
    model, flags = "unknown CPU", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    simd = next(
        (
            label
            for flag, label in (
                ("avx512_vnni", "AVX-512 VNNI"),
                ("avx512f", "AVX-512"),
                ("avx2", "AVX2"),
                ("asimd", "NEON"),
            )
            if flag in flags
        ),
        "no SIMD flags read",
    )
    return f"{model}, {os.cpu_count()} cores, {simd}"


def machine_load() -> str:
    """The 1-minute load average beside the core count: other work on the machine moves
    every timing, so each section says how loaded the machine was."""
    try:
        one_minute = os.getloadavg()[0]
    except OSError:
        return "load unknown"
    return f"load average {one_minute:.1f} on {os.cpu_count()} cores"


Statistic = Callable[..., Any]  # numpy reduction taking axis=, e.g. np.median, np.mean


def bootstrap_ratio(
    numerator: Sequence[float],
    denominator: Sequence[float],
    resamples: int = 2000,
    seed: int = 0,
    statistic: Statistic = np.median,
) -> tuple[float, float, float]:
    """statistic(numerator) / statistic(denominator) and its 95% percentile-bootstrap
    interval, each side's samples resampled independently."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(numerator, float), np.asarray(denominator, float)
    ia = rng.integers(0, a.size, (resamples, a.size))
    ib = rng.integers(0, b.size, (resamples, b.size))
    ratios = statistic(a[ia], axis=1) / statistic(b[ib], axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(statistic(a) / statistic(b)), float(low), float(high)


def bootstrap_statistic(
    samples: Sequence[float],
    statistic: Statistic = np.median,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """statistic(samples) (e.g. `lambda a, axis=None: np.percentile(a, 99, axis=axis)`) and
    its 95% percentile-bootstrap interval."""
    rng = np.random.default_rng(seed)
    a = np.asarray(samples, float)
    values = statistic(a[rng.integers(0, a.size, (resamples, a.size))], axis=1)
    low, high = np.percentile(values, [2.5, 97.5])
    return float(statistic(a)), float(low), float(high)


def bootstrap_median(
    samples: Sequence[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """The median of `samples` and its 95% percentile-bootstrap interval."""
    return bootstrap_statistic(samples, np.median, resamples, seed)


def bootstrap_difference(
    a: Sequence[float],
    b: Sequence[float],
    resamples: int = 2000,
    seed: int = 0,
    statistic: Statistic = np.mean,
) -> tuple[float, float, float]:
    """statistic(a) - statistic(b) and its 95% percentile-bootstrap interval, each side's
    samples resampled independently (e.g. two models' 0/1 answers: a gain in accuracy)."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(a, float), np.asarray(b, float)
    ix = rng.integers(0, x.size, (resamples, x.size))
    iy = rng.integers(0, y.size, (resamples, y.size))
    differences = statistic(x[ix], axis=1) - statistic(y[iy], axis=1)
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(statistic(x) - statistic(y)), float(low), float(high)


def p99(samples: Any, axis: int | None = None) -> Any:
    """The 99th percentile, as a bootstrap statistic."""
    return np.percentile(samples, 99, axis=axis)


Estimate = tuple[float, float, float]  # (figure, low, high): a figure and its 95% interval
Direction = Literal["at least", "at most"]


class Goal(BaseModel):
    """One claim of a benchmark: a measured figure, its interval when there is one, and the
    goal it is held to. Met only when the whole interval clears the goal."""

    claim: str
    figure: float
    low: float | None = None
    high: float | None = None
    goal: float
    direction: Direction
    unit: str = ""
    note: str = ""

    @property
    def met(self) -> bool:
        if self.direction == "at least":
            return (self.low if self.low is not None else self.figure) >= self.goal
        return (self.high if self.high is not None else self.figure) <= self.goal

    def interval(self, digits: int = 2) -> str:
        if self.low is None or self.high is None:
            return ""
        return f"[{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def verdict(self) -> str:
        return "met" if self.met else "not met"

    @classmethod
    def of(
        cls,
        claim: str,
        measured: float | Estimate,
        *,
        at_least: float | None = None,
        at_most: float | None = None,
        unit: str = "",
        note: str = "",
    ) -> Goal:
        """The goal row of a figure, or of a (figure, low, high) estimate as the bootstrap
        helpers return it, held to exactly one bound: `at_least=` or `at_most=`."""
        if (at_least is None) == (at_most is None):
            raise ValueError(f"{claim!r}: give exactly one of at_least= and at_most=")
        figure, low, high = measured if isinstance(measured, tuple) else (measured, None, None)
        direction: Direction = "at least" if at_least is not None else "at most"
        bound = at_least if at_least is not None else at_most
        assert bound is not None  # exactly one was given, checked above
        return cls(
            claim=claim,
            figure=figure,
            low=low,
            high=high,
            goal=bound,
            direction=direction,
            unit=unit,
            note=note,
        )


class BenchmarkResult(BaseModel):
    name: str
    command: str
    cpu: str
    load: str
    goals: list[Goal]


def write_results(name: str, command: str, goals: list[Goal]) -> Path:
    """Write `results/<name>.json`, the machine-readable record of the run's goals."""
    RESULTS_DIR.mkdir(exist_ok=True)
    result = BenchmarkResult(
        name=name, command=command, cpu=cpu_name(), load=machine_load(), goals=goals
    )
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result.model_dump(), indent=2) + "\n")
    return path


def goals_markdown(goals: list[Goal], digits: int = 2) -> list[str]:
    """The goals as a markdown table (figure, 95% interval, goal, verdict)."""
    lines = ["| claim | figure | 95% interval | goal | verdict |", "|---|---:|---|---|---|"]
    for g in goals:
        lines.append(
            f"| {g.claim} | {g.figure:.{digits}f}{g.unit} | {g.interval(digits)} "
            f"| {g.direction} {g.goal:g}{g.unit} | {g.verdict()} |"
        )
    return lines
