"""`moe_decode.py --sweep`: the served decoding's free parameters chosen on the dev split.

The Fast-dLLM confidence threshold and the block length are swept on the dev split's hard
tasks (`evaluate.dev_tasks`: held-out-split prompts of another seed, none of them among the
held-out tasks the section reports), each setting's accuracy paired against LLaDA's one-
token-per-step sampler on the same tasks, and its speed as the per-round ratio of tokens/s
(the settings take turns within a round). The rule that picks the shipped setting: of the
settings whose dev speed keeps `MIN_SPEED` times LLaDA's (the 2x goal with room for the
held-out run's noise), the one with the smallest accuracy cost; ties go to the faster.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks._moe_decode.modes import HARD, Mode, llada_config, run_mode, served_config
from benchmarks._moe_decode.stats import Estimate, paired_difference, paired_ratio, points
from benchmarks._report import RESULTS_DIR, cpu_name, machine_load

if TYPE_CHECKING:
    from trifecta.generative.decoding import Decoder

THRESHOLDS: tuple[float | None, ...] = (0.9, 0.95, 0.97, 0.99, None)  # None: one per step
BLOCKS = (2, 4, 8)
MIN_SPEED = 2.5
RESULTS = RESULTS_DIR / "moe_decode_sweep.json"


@dataclass
class SweepRow:
    threshold: float | None
    block_length: int
    accuracy: float  # grades 3-5 of the dev split
    by_grade: list[float]
    tokens_per_second: float  # median over the rounds
    speed: Estimate  # over LLaDA one-per-step, per-round ratios
    positions: float  # token positions computed, as a share of LLaDA's
    change: Estimate  # accuracy points against LLaDA, paired over the tasks


def label(threshold: float | None, block_length: int, cache: bool = True) -> str:
    rule = f"threshold {threshold}" if threshold is not None else "one token per step"
    return f"{rule}, blocks of {block_length}, " + ("dual cache" if cache else "no cache")


def run_sweep(decoder: Decoder, per_grade: int, reps: int) -> tuple[list[SweepRow], float]:
    """Every setting of the grid and LLaDA's one token per step, taking turns `reps` times
    on the dev split's hard tasks; the rows and LLaDA's accuracy."""
    from trifecta.generative.evaluate import dev_tasks

    by_grade = dev_tasks(per_grade, HARD)
    tasks = [t for g in HARD for t in by_grade[g]]
    grades = np.array([t.difficulty for t in tasks])
    base = Mode("LLaDA one token per step, no cache", llada_config())
    grid = [
        Mode(label(t, b), served_config(threshold=t, block_length=b, cache=True, steps=24))
        for b in BLOCKS
        for t in THRESHOLDS
    ]
    modes = [base, *grid]
    for rep in range(reps):
        for mode in modes if rep % 2 == 0 else reversed(modes):
            run_mode(decoder, mode, tasks)
        print(f"sweep round {rep + 1}/{reps} ({machine_load()})", flush=True)
    assert base.correct is not None
    rows = []
    for mode in grid:
        assert mode.correct is not None
        rows.append(
            SweepRow(
                threshold=mode.config.threshold,
                block_length=mode.config.block_length,
                accuracy=float(mode.correct.mean()),
                by_grade=[float(mode.correct[grades == g].mean()) for g in HARD],
                tokens_per_second=float(np.median(mode.speeds)),
                speed=paired_ratio(mode.speeds, base.speeds),
                positions=mode.positions / base.positions,
                change=points(paired_difference(mode.correct, base.correct)),
            )
        )
    return rows, float(base.correct.mean())


def choose(rows: list[SweepRow]) -> SweepRow:
    """The smallest accuracy cost among the settings at least MIN_SPEED x LLaDA on dev."""
    fast = [r for r in rows if r.speed[0] >= MIN_SPEED] or rows
    return max(fast, key=lambda r: (round(r.change[0], 6), r.speed[0]))


def results(
    rows: list[SweepRow], chosen: SweepRow, command: str, llada_accuracy: float
) -> dict[str, object]:
    """What `--sweep` saves (`RESULTS`) and a full run's section shows."""
    return {
        "command": command,
        "cpu": cpu_name(),
        "load": machine_load(),
        "llada_accuracy": llada_accuracy,
        "min_speed": MIN_SPEED,
        "chosen": asdict(chosen),
        "rows": [asdict(r) for r in rows],
    }


def sweep_lines(saved: dict[str, Any]) -> list[str]:
    """The sweep's table for the section, from its saved results."""
    rows = [SweepRow(**r) for r in saved["rows"]]
    chosen = SweepRow(**saved["chosen"])
    lines = [
        f"Served settings chosen on the dev split (`{saved['command']}`; {saved['load']} at the "
        "end): hard tasks (grades 3-5) of the held-out split drawn with another seed "
        "(`DEV_SEED`), none of them among the held-out tasks below. LLaDA one token per step "
        f"answers {saved['llada_accuracy']:.1%} of them "
        "(blocks of 4, no cache). Rule: of the settings "
        f"at least {saved['min_speed']}x LLaDA's tokens/s on dev, the smallest accuracy cost; "
        f"chosen: **{label(chosen.threshold, chosen.block_length)}**.",
        "",
        "| setting | grade 3 | grade 4 | grade 5 | all hard | vs LLaDA (points) | tokens/s "
        "| vs LLaDA | positions computed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c, s = r.change, r.speed
        lines.append(
            f"| {label(r.threshold, r.block_length)} | "
            + " | ".join(f"{a:.1%}" for a in r.by_grade)
            + f" | {r.accuracy:.1%} | {c[0]:+.1f} [{c[1]:+.1f}, {c[2]:+.1f}] | "
            f"{r.tokens_per_second:,.0f} | {s[0]:.2f}x [{s[1]:.2f}, {s[2]:.2f}] | "
            f"{r.positions:.2f} |"
        )
    return lines
