"""`trifecta cognitive eval`: accuracy against compute cost on held-out tasks, for every policy.

Policies: each tier alone, the entropy cascade, random escalation at the cascade's rates, the
oracle, the trained router (RouteLLM-style, on prompt embeddings), a router on the prompt's
structure (length, operand count: `prompt_features.py`), and the router and cascade combined.
Thresholds are fitted on a calibration sample and reported on a disjoint evaluation sample,
both from the held-out split; the routers train on the train split. The cascade is also run for
real on the evaluation sample at its operating point, so the headline figures come from the
live component (with early stopping), not only from the replay. Every figure carries a
bootstrap 95% interval over the evaluation tasks (`bootstrap.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from trifecta.cognitive.backends.shipped import shipped_tiers
from trifecta.cognitive.bootstrap import (
    GapIntervals,
    Interval,
    PointIntervals,
    Route,
    gap_intervals,
    paired_difference,
    point_intervals,
)
from trifecta.cognitive.calibration import Observations, Replay, Target, calibrate, replay
from trifecta.cognitive.cascade import Thresholds, cascade_of
from trifecta.cognitive.cost import all_tier_costs
from trifecta.cognitive.entropy import AGGREGATES, DEFAULT_AGGREGATE, DEFAULT_WINDOW, Aggregate
from trifecta.cognitive.families import (
    COARSE_GRID,
    Configuration,
    Family,
    always,
    cascade_family,
    oracle,
    random_escalation,
    random_mean,
    router_family,
)
from trifecta.cognitive.metrics import apgr, auroc, calls_for_gap
from trifecta.cognitive.observe import ANSWER_TOKENS, TierRuns, run_tiers
from trifecta.cognitive.prompt_features import PromptFeatures
from trifecta.cognitive.router import TrainedRouter
from trifecta.cognitive.start_router import shipped_router
from trifecta.cognitive.tiers import TIER_NAMES
from trifecta.core.embeddings import get_embedder
from trifecta.core.protocols import Embedder
from trifecta.core.tasks import DEFAULT_MIX, Task, TaskFamilyVerifier, generate_tasks

CALL_SHARES = np.linspace(0.0, 1.0, 21)  # x-axis of RouteLLM's PGR curve
LIVE = "auto (live)"  # the product's policy, run for real: the headline row
OperatingPoint = Literal["budget", "keep", "accurate"]


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calibration_tasks: int = Field(default=600, ge=50)
    eval_tasks: int = Field(default=1000, ge=50)
    router_tasks: int = Field(
        default=2000, ge=50, description="train-split tasks the router learns from"
    )
    seed: int = 0
    budget: float = Field(
        default=0.40, gt=0, le=1, description="compute cost, share of the largest tier"
    )
    operating_point: OperatingPoint = Field(
        default="budget",
        description="how each policy's configuration is chosen on the calibration sample: "
        "'budget', the most accurate whose compute stays within `budget` by its bootstrap "
        "upper bound (the product's calibration target, `service.DEFAULT_TARGET`); 'keep', "
        "the cheapest whose bootstrap lower bound keeps `keep_accuracy` of the largest tier's "
        "accuracy; 'accurate', the most accurate within the budget by the point estimate",
    )
    keep_accuracy: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="share of the largest tier's accuracy the 'keep' operating point keeps, "
        "by the lower end of its bootstrap 95% interval on the calibration sample",
    )
    aggregate: Aggregate = DEFAULT_AGGREGATE
    window: int = Field(default=DEFAULT_WINDOW, ge=1)
    domain: str | None = None
    bootstrap: int = Field(default=1000, ge=0, description="bootstrap draws (0: no intervals)")


@dataclass(frozen=True)
class Point:
    """One policy at one operating point, on the evaluation sample."""

    method: str
    accuracy: float
    cost_share: float  # compute (FLOPs) / always the largest tier
    usd_share: float
    large_share: float  # share of requests that reach the largest tier
    spread: float = 0.0  # accuracy's standard deviation across random draws
    detail: str = ""


@dataclass(frozen=True)
class GapMetrics:
    method: str
    apgr: float
    cpt50: float | None
    cpt80: float | None


@dataclass
class EvalReport:
    config: EvalConfig
    tiers: tuple[str, ...]
    points: list[Point]
    gap: list[GapMetrics]
    aurocs: dict[str, dict[str, float]]  # aggregate -> tier -> AUROC of predicting a wrong answer
    curves: dict[str, list[tuple[float, float]]]  # method -> (cost share, accuracy)
    accuracy_by_grade: dict[str, dict[int, float]]  # tier -> grade -> accuracy
    thresholds: Thresholds
    live_agrees: bool
    extras: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, PointIntervals] = field(default_factory=dict)  # method -> 95% CIs
    gap_intervals: dict[str, GapIntervals] = field(default_factory=dict)
    # APGR of the cascade minus the best baseline router's, paired over the same draws
    apgr_margin: Interval | None = None
    apgr_baseline: str = ""
    # of the evaluation tasks only the largest tier solves, the share the live cascade sent there
    needed_reached: float = float("nan")

    def point(self, method: str) -> Point:
        return next(p for p in self.points if p.method == method)


Progress = Callable[[str], None]


def _usd_share(runs: TierRuns, replay: Replay) -> float:
    tokens = runs.tokens()
    usd = np.array([c.usd_per_token for c in runs.costs])
    levels = np.arange(len(runs.tiers))[:, None]
    visited = (levels >= replay.start_tier[None, :]) & (levels <= replay.end_tier[None, :])
    return float((visited * tokens * usd[:, None]).sum() / (tokens[-1] * usd[-1]).sum())


def _point(
    method: str, runs: TierRuns, replay: Replay, *, spread: float = 0.0, detail: str = ""
) -> Point:
    return Point(
        method,
        replay.accuracy or 0.0,
        replay.cost_share,
        _usd_share(runs, replay),
        replay.reach[-1],
        spread,
        detail,
    )


def evaluate(
    config: EvalConfig, *, progress: Progress | None = None, embedder: Embedder | None = None
) -> EvalReport:
    say = progress or (lambda _msg: None)
    backends = shipped_tiers(TIER_NAMES)
    costs = all_tier_costs()
    calib_tasks = generate_tasks(
        config.calibration_tasks,
        seed=config.seed,
        split="heldout",
        difficulties=DEFAULT_MIX,
        domain=config.domain,
    )
    seen = {t.prompt for t in calib_tasks}
    eval_tasks = [
        t
        for t in generate_tasks(
            config.eval_tasks + len(seen),
            seed=config.seed + 7919,
            split="heldout",
            difficulties=DEFAULT_MIX,
            domain=config.domain,
        )
        if t.prompt not in seen
    ][: config.eval_tasks]
    router_tasks = generate_tasks(
        config.router_tasks,
        seed=config.seed,
        split="train",
        difficulties=DEFAULT_MIX,
        domain=config.domain,
    )
    say("running every tier on the calibration, evaluation and router-training tasks")
    calib_runs = run_tiers(backends, costs, calib_tasks)
    eval_runs = run_tiers(backends, costs, eval_tasks)
    train_runs = run_tiers(backends, costs, router_tasks)

    aurocs = _aurocs(calib_runs, eval_runs, config.window)
    calib = calib_runs.observations(config.aggregate, config.window)
    evaluation = eval_runs.observations(config.aggregate, config.window)
    grades = _accuracy_by_grade(eval_runs)

    say("training the routers on prompt embeddings and on prompt features")
    calib_p, eval_p = _router_probabilities(
        embedder or get_embedder(), router_tasks, train_runs, calib_tasks, eval_tasks
    )
    calib_f, eval_f = _router_probabilities(
        PromptFeatures(), router_tasks, train_runs, calib_tasks, eval_tasks
    )

    say("replaying every configuration of each policy")
    families = {
        "cascade": cascade_family(calib, evaluation),
        "router": router_family(calib, evaluation, calib_p, eval_p),
        "features router": _renamed(
            router_family(calib, evaluation, calib_f, eval_f), "features router"
        ),
        "router+cascade": router_family(
            calib, evaluation, calib_p, eval_p, cascade_grid=COARSE_GRID, router_grid=COARSE_GRID
        ),
        "features router+cascade": _renamed(
            router_family(
                calib,
                evaluation,
                calib_f,
                eval_f,
                cascade_grid=COARSE_GRID,
                router_grid=COARSE_GRID,
            ),
            "features router+cascade",
        ),
    }
    if config.operating_point in ("budget", "keep"):
        chosen = {
            name: family.most_accurate_within(calib, config.budget)
            if config.operating_point == "budget"
            else family.cheapest_keeping(calib, config.keep_accuracy)
            for name, family in families.items()
        }
        # What the product serves: `auto`'s thresholds (and, with a shipped router, its start
        # cut-offs) fitted by the product's own calibration on the same sample.
        thresholds = _product_thresholds(config, calib, calib_tasks)
    else:
        chosen = {name: family.select(_budget(config.budget)) for name, family in families.items()}
        thresholds = Thresholds(
            aggregate=config.aggregate,
            window=config.window,
            values=dict(zip(TIER_NAMES[:-1], chosen["cascade"].thresholds, strict=True)),
        )
    points = [
        _point(f"always {name}", eval_runs, always(evaluation, i))
        for i, name in enumerate(TIER_NAMES)
    ]
    for name, configuration in chosen.items():
        points.append(
            _point(name, eval_runs, configuration.evaluation, detail=_describe(configuration))
        )
    cascade_rates = configuration_rates(chosen["cascade"])
    random_replay, spread = random_mean(evaluation, cascade_rates)
    points.append(
        _point(
            "random escalation",
            eval_runs,
            random_replay,
            spread=spread,
            detail="at the cascade's per-tier rates, mean of 20 draws",
        )
    )
    points.append(_point("oracle", eval_runs, oracle(evaluation)))

    say("running the live auto model on the evaluation tasks")
    live, live_route = _live_cascade(backends, costs, thresholds, eval_runs)
    points.append(live)
    expected = _replayed(thresholds, evaluation, eval_tasks)
    live_agrees = abs(live.accuracy - (expected.accuracy or 0.0)) < 1e-9

    gap, gap_routes = _gap_metrics(families, evaluation)
    curves = {name: _cost_curve(family) for name, family in families.items()}
    curves["random escalation"] = [
        (r.cost_share, r.accuracy or 0.0)
        for r in (
            random_mean(evaluation, configuration_rates(families["cascade"].select(_budget(b))))[0]
            for b in _budgets()
        )
    ]
    report = EvalReport(
        config=config,
        tiers=TIER_NAMES,
        points=points,
        gap=gap,
        aurocs=aurocs,
        curves=curves,
        accuracy_by_grade=grades,
        thresholds=thresholds,
        live_agrees=live_agrees,
        extras={
            "replayed accuracy": expected.accuracy or 0.0,
            "replayed cost share": expected.cost_share,
        },
        needed_reached=_needed_reached(evaluation, live_route),
    )
    if config.bootstrap:
        say("bootstrapping the intervals")
        routes: dict[str, list[Route]] = {
            f"always {name}": [_route(always(evaluation, i))] for i, name in enumerate(TIER_NAMES)
        }
        routes.update({name: [_route(c.evaluation)] for name, c in chosen.items()})
        routes["random escalation"] = [
            _route(random_escalation(evaluation, cascade_rates, seed=s)) for s in range(20)
        ]
        routes["oracle"] = [_route(oracle(evaluation))]
        routes[LIVE] = [live_route]
        usd = np.array([c.usd_per_token for c in eval_runs.costs])
        report.intervals = point_intervals(
            evaluation, usd, routes, samples=config.bootstrap, seed=config.seed
        )
        report.gap_intervals, draws = gap_intervals(
            evaluation, gap_routes, list(CALL_SHARES), samples=config.bootstrap, seed=config.seed
        )
        baselines = ("router", "features router", "random escalation")
        best = max(baselines, key=lambda name: next(g.apgr for g in gap if g.method == name))
        report.apgr_baseline = best
        report.apgr_margin = paired_difference(draws["cascade"], draws[best])
    return report


def _product_thresholds(config: EvalConfig, calib: Observations, tasks: list[Task]) -> Thresholds:
    """`auto`'s configuration as `trifecta cognitive calibrate` fits it on `calib`: a `cost`
    target (`--budget`) or a `keep` one, with the shipped router's start cut-offs when a
    router ships."""
    router = shipped_router()
    fitted = calibrate(
        calib,
        Target(kind="cost", value=config.budget)
        if config.operating_point == "budget"
        else Target(kind="keep", value=config.keep_accuracy),
        aggregate=config.aggregate,
        window=config.window,
        probabilities=router.probabilities([t.prompt for t in tasks]) if router else None,
    )
    return fitted.thresholds


def _replayed(thresholds: Thresholds, obs: Observations, tasks: list[Task]) -> Replay:
    """`thresholds` (and their router cut-offs) replayed on `obs`: what the live run should
    reproduce."""
    values = [thresholds.values[name] for name in TIER_NAMES[:-1]]
    router = shipped_router() if thresholds.router else None
    if router is None:
        return replay(obs, values)
    starts = np.array(router.starts([t.prompt for t in tasks], thresholds.router))
    return replay(obs, values, start=starts)


def _router_probabilities(
    embedder: Embedder,
    router_tasks: list[Task],
    train_runs: TierRuns,
    calib_tasks: list[Task],
    eval_tasks: list[Task],
) -> tuple[np.ndarray, np.ndarray]:
    router = TrainedRouter(embedder, TIER_NAMES).fit(
        [t.prompt for t in router_tasks], train_runs.correct()
    )
    return (
        router.success_probabilities([t.prompt for t in calib_tasks]),
        router.success_probabilities([t.prompt for t in eval_tasks]),
    )


def _renamed(family: Family, name: str) -> Family:
    return Family(name, family.configurations)


def _route(replay: Replay) -> Route:
    return (replay.start_tier, replay.end_tier)


def _needed_reached(evaluation: Observations, route: Route) -> float:
    """Of the tasks only the largest tier solves, the share that ended on it."""
    assert evaluation.correct is not None
    correct = evaluation.correct
    needed = correct[-1] & ~correct[:-1].any(axis=0)
    if not needed.any():
        return float("nan")
    return float((route[1][needed] == len(evaluation.tiers) - 1).mean())


def configuration_rates(configuration: Configuration) -> tuple[float, ...]:
    return configuration.evaluation.rates


def _budget(share: float) -> Callable[[Replay], bool]:
    return lambda r: r.cost_share <= share


def _large_calls(share: float) -> Callable[[Replay], bool]:
    return lambda r: r.reach[-1] <= share + 1e-9


def _budgets() -> list[float]:
    return [round(b, 3) for b in np.linspace(0.1, 1.0, 19)]


def _describe(configuration: Configuration) -> str:
    return _setting(configuration.thresholds, configuration.router)


def _setting(thresholds: Sequence[float], router: Sequence[float] | None) -> str:
    """'router 0.57, 0.62; thresholds 1.222, 0.583' (never / always for the sentinels)."""
    parts = []
    if router is not None:
        parts.append("router " + ", ".join(f"{a:.2f}" for a in router))
    if any(v < 1e8 for v in thresholds):
        parts.append(
            "thresholds "
            + ", ".join(
                "never" if v >= 1e8 else "always" if v < 0 else f"{v:.3f}" for v in thresholds
            )
        )
    return "; ".join(parts)


def _describe_thresholds(thresholds: Thresholds) -> str:
    names = TIER_NAMES[:-1]
    router = [thresholds.router[name] for name in names] if thresholds.router else None
    return _setting([thresholds.values[name] for name in names], router)


def _cost_curve(family: Family) -> list[tuple[float, float]]:
    picks = [family.select(_budget(b)).evaluation for b in _budgets()]
    return sorted({(r.cost_share, r.accuracy or 0.0) for r in picks})


def _gap_metrics(
    families: dict[str, Family], evaluation: Observations
) -> tuple[list[GapMetrics], dict[str, list[Route]]]:
    weak = always(evaluation, 0).accuracy or 0.0
    strong = always(evaluation, len(evaluation.tiers) - 1).accuracy or 0.0
    results = []
    curves: dict[str, list[Replay]] = {
        name: [family.select(_large_calls(x)).evaluation for x in CALL_SHARES]
        for name, family in families.items()
    }
    curves["random escalation"] = [
        random_mean(evaluation, configuration_rates(families["cascade"].select(_large_calls(x))))[0]
        for x in CALL_SHARES
    ]
    routes = {name: [_route(r) for r in replays] for name, replays in curves.items()}
    for name, replays in curves.items():
        shares = [r.reach[-1] for r in replays]
        accuracies = [r.accuracy or 0.0 for r in replays]
        # The curve is read at the call shares the policy actually used, capped by the x-axis.
        xs = [min(s, x) for s, x in zip(shares, CALL_SHARES, strict=True)]
        results.append(
            GapMetrics(
                name,
                apgr(list(CALL_SHARES), accuracies, weak, strong),
                calls_for_gap(xs, accuracies, weak, strong, 0.5),
                calls_for_gap(xs, accuracies, weak, strong, 0.8),
            )
        )
    return results, routes


def _aurocs(calib: TierRuns, evaluation: TierRuns, window: int) -> dict[str, dict[str, float]]:
    correct = np.concatenate([calib.correct(), evaluation.correct()], axis=1)
    table: dict[str, dict[str, float]] = {}
    for aggregate in AGGREGATES:
        scores = np.concatenate(
            [calib.scores(aggregate, window), evaluation.scores(aggregate, window)], axis=1
        )
        table[aggregate] = {
            tier: auroc(scores[i], ~correct[i]) for i, tier in enumerate(calib.tiers)
        }
    return table


def _accuracy_by_grade(runs: TierRuns) -> dict[str, dict[int, float]]:
    correct = runs.correct()
    grades = np.array([t.difficulty for t in runs.tasks])
    return {
        tier: {int(g): float(correct[i][grades == g].mean()) for g in sorted(set(grades.tolist()))}
        for i, tier in enumerate(runs.tiers)
    }


def _live_cascade(
    backends: list, costs: dict, thresholds: Thresholds, runs: TierRuns
) -> tuple[Point, Route]:
    cascade = cascade_of(backends, costs, thresholds)
    outputs = cascade.generate([t.prompt for t in runs.tasks], max_new_tokens=ANSWER_TOKENS)
    verifier = TaskFamilyVerifier()
    accuracy = float(
        np.mean(
            [
                bool(verifier.verify(t.prompt, o.text))
                for t, o in zip(runs.tasks, outputs, strict=True)
            ]
        )
    )
    tokens_large = runs.tokens()[-1]
    flops_large = float(tokens_large.sum() * runs.costs[-1].flops_per_token)
    usd_large = float(tokens_large.sum() * runs.costs[-1].usd_per_token)
    flops = sum(o.flops for o in outputs)  # type: ignore[attr-defined]
    usd = sum(o.usd for o in outputs)  # type: ignore[attr-defined]
    large = float(np.mean([TIER_NAMES[-1] in o.path for o in outputs]))  # type: ignore[attr-defined]
    start = np.array([TIER_NAMES.index(o.path[0]) for o in outputs])  # type: ignore[attr-defined]
    end = np.array([TIER_NAMES.index(o.path[-1]) for o in outputs])  # type: ignore[attr-defined]
    point = Point(
        LIVE,
        accuracy,
        flops / flops_large,
        usd / usd_large,
        large,
        detail="the real EscalationCascade as `auto` serves it, early stopping"
        + (", the shipped router's start tiers; " if thresholds.router else "; ")
        + _describe_thresholds(thresholds),
    )
    return point, (start, end)
