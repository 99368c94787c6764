"""Commands of the cognitive layer: `trifecta models ...` and `trifecta cognitive ...`.

Heavy libraries (torch, transformers, scikit-learn, matplotlib) are imported inside the
command bodies so that `trifecta --help` stays fast. Bad input raises `InvalidInput`;
`trifecta.cli.main` prints it as one line and exits with code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from trifecta.cognitive.scratchpad import ANSWER_TOKENS
from trifecta.cognitive.tiers import AUTO_MODEL, TIER_NAMES, TIERS, get_tier, tier_dir
from trifecta.core.errors import InvalidInput

console = Console() if sys.stdout.isatty() else Console(width=160)

models_app = typer.Typer(
    help="The shipped checkpoint tiers: train them, list them.", no_args_is_help=True
)
cognitive_app = typer.Typer(
    help="UserLM tiers and entropy escalation: generate, calibrate thresholds, evaluate.",
    no_args_is_help=True,
)


def _progress() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


# ---------------------------------------------------------------- models


@models_app.command("train")
def models_train(
    tier: Annotated[str, typer.Option(help=f"{', '.join(TIER_NAMES)} or all")] = "all",
    seed: Annotated[int, typer.Option(help="seeds the weights and the task stream")] = 0,
    steps: Annotated[
        int | None, typer.Option(help="optimiser steps (default: the tier's recipe)")
    ] = None,
    refine_steps: Annotated[
        int | None,
        typer.Option(min=0, help="steps of the refine phase (default: the tier's recipe)"),
    ] = None,
    threads: Annotated[
        int, typer.Option(min=1, help="torch threads (1 is fastest on a busy machine)")
    ] = 1,
    out: Annotated[
        Path | None,
        typer.Option(
            help="write the tiers here (default: the data directory's cognitive/tiers; "
            "`trifecta models promote` ships them)"
        ),
    ] = None,
    scratch: Annotated[
        bool, typer.Option(help="train from scratch instead of growing the next smaller tier")
    ] = False,
    warm_start: Annotated[
        bool,
        typer.Option(
            help="continue the tier already in --out (else the shipped one) with its refine "
            "phase only"
        ),
    ] = False,
    refine_mix: Annotated[
        str | None,
        typer.Option(
            help="grade weights of the refine phase, e.g. 1=4,3=2,4=1.5,5=4 (default: the recipe's)"
        ),
    ] = None,
    refine_lr: Annotated[
        float | None,
        typer.Option(min=0, help="peak learning rate of the refine phase (default: the recipe's)"),
    ] = None,
) -> None:
    """Train tiers on the task family's train split (seeded, with a progress bar) into the data
    directory. A larger tier starts from the next smaller one, grown to its size (see
    docs/cognitive.md). The shipped tiers change only through `trifecta models promote`."""
    names = list(TIER_NAMES) if tier == "all" else [get_tier(tier).name]
    out = out if out is not None else trained_dir()
    if steps is not None and steps < 1:
        raise InvalidInput("must be at least 1", field="steps")
    weights = _grade_weights(refine_mix) if refine_mix is not None else None
    import torch

    from trifecta.cognitive.training import train_tier

    torch.set_num_threads(threads)
    results: list[Any] = []
    with _progress() as progress:
        for name in names:
            spec = TIERS[name]
            main = steps or spec.train_steps
            warm = _warm_start(name, out) if warm_start else None
            refine = spec.refine_steps if refine_steps is None else refine_steps
            if warm is not None and refine == 0:
                raise InvalidInput(f"tier {name!r} has no refine phase", field="warm_start")
            total = refine + (0 if warm is not None else main)
            task = progress.add_task(f"training {name}", total=total, status="")

            def on_step(step: int, loss: float, task: Any = task) -> None:
                progress.update(task, completed=step, status=f"loss {loss:.3f}")

            parent = None if scratch or warm is not None else _smaller_tier(name, results, out)
            results.append(
                train_tier(
                    spec,
                    seed=seed,
                    steps=main,
                    directory=out / name,
                    grow_from=parent,
                    warm_start=warm[0] if warm is not None else None,
                    earlier=warm[1] if warm is not None else None,
                    refine_steps=refine,
                    on_step=on_step,
                    refine_mix=weights,
                    refine_learning_rate=refine_lr,
                )
            )
    table = Table(title="held-out accuracy per grade")
    table.add_column("tier")
    for grade in sorted(results[0].heldout_accuracy):
        table.add_column(f"grade {grade}", justify="right")
    table.add_column("grown", justify="right")
    table.add_column("seconds", justify="right")
    for result in results:
        table.add_row(
            result.tier,
            *(f"{a:.1%}" for a in result.heldout_accuracy.values()),
            "yes" if result.grown_from else "no",
            f"{result.seconds:.0f}",
        )
    console.print(table)
    console.print(f"saved under {out}; ship them with `trifecta models promote --from {out}`")


def _grade_weights(text: str) -> dict[int, float]:
    """`1=4,3=2` -> {1: 4.0, 3: 2.0}: grades of `core.tasks.DIFFICULTIES`, positive weights."""
    from trifecta.core.tasks import DIFFICULTIES

    weights: dict[int, float] = {}
    for part in text.split(","):
        grade, _, weight = part.partition("=")
        try:
            key, value = int(grade), float(weight)
        except ValueError:
            raise InvalidInput(f"{part!r} is not GRADE=WEIGHT", field="refine_mix") from None
        if key not in DIFFICULTIES or value <= 0:
            raise InvalidInput(
                f"grade {key} weight {value}: grades {list(DIFFICULTIES)}, weights above 0",
                field="refine_mix",
            )
        weights[key] = value
    return weights


def trained_dir() -> Path:
    """Where `trifecta models train` writes tiers by default: the data directory, never the
    installed package."""
    from trifecta.core.settings import get_settings

    return get_settings().data_dir / "cognitive" / "tiers"


@models_app.command("promote")
def models_promote(
    tier: Annotated[str, typer.Option(help=f"{', '.join(TIER_NAMES)} or all")] = "all",
    source: Annotated[
        Path | None,
        typer.Option("--from", help="trained tiers (default: the data directory's)"),
    ] = None,
    calibrate: Annotated[
        bool, typer.Option(help="recalibrate the default thresholds afterwards")
    ] = True,
) -> None:
    """Copy trained tiers into the package's assets, where every command loads them from."""
    from trifecta.cognitive.checkpoints import promote

    names = list(TIER_NAMES) if tier == "all" else [get_tier(tier).name]
    origin = source if source is not None else trained_dir()
    for name in names:
        promote(origin / name, TIERS[name].directory)
        console.print(f"{name}: {origin / name} -> {TIERS[name].directory}")
    if calibrate and all((TIERS[n].directory / "model.safetensors").is_file() for n in TIER_NAMES):
        _calibrate_default(sample=None, seed=0)


def _warm_start(name: str, out: Path) -> tuple[Any, dict[str, Any]]:
    """The trained tier `name` to continue, and its training record: the one in `out` when
    there is one, else the shipped one."""
    from trifecta.cognitive.checkpoints import load_checkpoint

    directory = out / name
    if not (directory / "model.safetensors").is_file():
        directory = tier_dir(name)
    record_file = directory / "training.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    return load_checkpoint(directory)[0], record


def _smaller_tier(name: str, trained: list[Any], out: Path) -> Any:
    """The model a tier grows from: the next smaller tier, as just trained or as saved."""
    index = TIER_NAMES.index(name)
    if index == 0:
        return None
    smaller = TIER_NAMES[index - 1]
    for result in trained:
        if result.tier == smaller:
            return result.model
    from trifecta.cognitive.checkpoints import load_checkpoint

    directory = out / smaller
    if not (directory / "model.safetensors").is_file():
        raise InvalidInput(
            f"{name} grows from {smaller}, which is not trained in {directory} "
            f"(train it first, or pass --scratch)",
            field="tier",
        )
    return load_checkpoint(directory)[0]


@models_app.command("list")
def models_list() -> None:
    """The tiers, the checkpoints they stand for, their size and held-out accuracy."""
    from trifecta.cognitive.cost import tier_cost

    table = Table(title="shipped tiers")
    for column in (
        "tier",
        "stands for",
        "accelerator",
        "parameters",
        "weights",
        "$/M tokens",
        "held-out accuracy by grade",
    ):
        table.add_column(
            column, justify="left" if column in ("tier", "stands for", "accelerator") else "right"
        )
    for name in TIER_NAMES:
        spec, cost = TIERS[name], tier_cost(name)
        weights = spec.directory / "model.safetensors"
        record_file = spec.directory / "training.json"
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        accuracy = " ".join(
            f"{float(v):.0%}" for _, v in sorted(record.get("heldout_accuracy", {}).items())
        )
        table.add_row(
            name,
            spec.preset,
            cost.accelerator,
            f"{record.get('parameters', 0):,}",
            f"{weights.stat().st_size / 1e6:.2f} MB" if weights.is_file() else "missing",
            f"{cost.usd_per_token * 1e6:.2f}",
            accuracy or "-",
        )
    console.print(table)


# ---------------------------------------------------------------- cognitive


@cognitive_app.command("generate")
def cognitive_generate(
    prompts: Annotated[list[str], typer.Argument(help="prompts of the task family, e.g. 41+17?")],
    model: Annotated[
        str,
        typer.Option(
            help=f"{', '.join(TIER_NAMES)}, {AUTO_MODEL}, a checkpoint "
            "directory or an http(s) endpoint"
        ),
    ] = AUTO_MODEL,
    model_name: Annotated[str | None, typer.Option(help="model to ask an endpoint for")] = None,
    capsule: Annotated[
        str | None, typer.Option(help="use this capsule's calibrated thresholds")
    ] = None,
    max_tokens: Annotated[
        int, typer.Option(min=1, help="tokens to generate at most")
    ] = ANSWER_TOKENS,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
) -> None:
    """Complete prompts with one tier, a checkpoint, an endpoint, or the escalating cascade.
    Where the task family's verifier can check a prompt, each answer is marked right or wrong
    (with the right answer); any other prompt is answered and marked unverifiable."""
    from trifecta.cognitive.backends import open_backend
    from trifecta.cognitive.cascade import CascadeGeneration
    from trifecta.cognitive.service import auto_model
    from trifecta.core.tasks import TaskFamilyVerifier, normalize_answer, solve

    verifier = TaskFamilyVerifier()

    backend = (
        auto_model(capsule) if model == AUTO_MODEL else open_backend(model, model_name=model_name)
    )
    outputs = backend.generate(prompts, max_new_tokens=max_tokens)
    for prompt, output in zip(prompts, outputs, strict=True):
        decisions = list(output.decisions) if isinstance(output, CascadeGeneration) else []
        verified = verifier.verify(prompt, output.text)
        expected = solve(prompt) if verified is not None else None
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "prompt": prompt,
                        "text": output.text,
                        "model": output.model,
                        "tokens": output.tokens,
                        "logprobs": output.logprobs,
                        "entropies": output.entropies,
                        "finish_reason": output.finish_reason,
                        "answer": normalize_answer(output.text),
                        "verified": verified,
                        "expected": expected,
                        "decisions": [d.__dict__ for d in decisions],
                    }
                )
            )
            continue
        path = " -> ".join(
            f"{d.tier} ({d.signal:.3f}{' > ' + format(d.threshold, '.3f') if d.escalated else ''})"
            for d in decisions
        )
        route = f"  {path}" if path else ""
        verdict = (
            "[dim]unverifiable[/dim]"
            if verified is None
            else "[green]right[/green]"
            if verified
            else f"[red]wrong[/red] (the answer is {expected})"
        )
        console.print(
            f"{prompt} [bold]{output.text}[/bold]  {verdict}  [dim]{output.model}{route}[/dim]",
            highlight=False,
        )


def _target(
    budget: float | None, quality: float | None, rate: float | None, keep: float | None = None
) -> Any:
    from trifecta.cognitive.calibration import Target
    from trifecta.cognitive.service import DEFAULT_TARGET

    given = [
        (k, v)
        for k, v in (("cost", budget), ("quality", quality), ("rate", rate), ("keep", keep))
        if v is not None
    ]
    if len(given) > 1:
        raise InvalidInput("give one of --budget, --quality, --rate, --keep", field="target")
    if not given:
        return DEFAULT_TARGET
    kind, value = given[0]
    if not 0 < value <= 1:
        raise InvalidInput("must be in (0, 1]", field=kind if kind != "cost" else "budget")
    return Target(kind=kind, value=value)


def _calibrate_default(sample: int | None, seed: int, target: Any = None) -> None:
    from trifecta.cognitive.calibration import ROUTED_KINDS
    from trifecta.cognitive.service import (
        DEFAULT_TARGET,
        ROUTER_TASKS,
        calibrate_on,
        fit_default_router,
        save_default_calibration,
        traffic_sample,
    )
    from trifecta.cognitive.settings import get_cognitive_settings

    size = sample or get_cognitive_settings().calibration_sample
    chosen = target or DEFAULT_TARGET
    if chosen.kind in ROUTED_KINDS:  # the router's cut-offs are fitted with the thresholds
        with console.status(f"fitting the start router on {ROUTER_TASKS} train-split tasks"):
            fit_default_router(ROUTER_TASKS, seed=seed)
    with console.status("calibrating the default thresholds on the default mix"):
        calibration = calibrate_on(traffic_sample(None, size, seed=seed + 1), chosen)
    default = save_default_calibration(calibration)
    console.print(
        f"default thresholds: {default.thresholds.values}, router cut-offs "
        f"{default.thresholds.router or 'none'} (rates {default.rates}, accuracy "
        f"{default.accuracy}, compute {default.cost_share:.1%} of the largest tier)"
    )


@cognitive_app.command("calibrate")
def cognitive_calibrate(
    capsule: Annotated[str | None, typer.Option(help="capsule id (from the registry)")] = None,
    default: Annotated[
        bool, typer.Option("--default", help="recalibrate the shipped defaults")
    ] = False,
    budget: Annotated[
        float | None,
        typer.Option(
            help="compute budget, share of the largest tier's, kept by a bootstrap upper bound: "
            "the most accurate thresholds within it (the default target: 0.40)"
        ),
    ] = None,
    quality: Annotated[float | None, typer.Option(help="target accuracy")] = None,
    rate: Annotated[float | None, typer.Option(help="share each tier hands on")] = None,
    keep: Annotated[
        float | None,
        typer.Option(
            help="share of the largest tier's accuracy to keep, by a bootstrap lower bound: "
            "the cheapest thresholds that keep it"
        ),
    ] = None,
    sample: Annotated[int | None, typer.Option(min=20, help="tasks in the traffic sample")] = None,
    seed: Annotated[int, typer.Option(help="seeds the traffic sample")] = 0,
) -> None:
    """Fit a capsule's escalation thresholds on a sample of its traffic and store them."""
    target = _target(budget, quality, rate, keep)
    if default == (capsule is not None):
        raise InvalidInput("give either --capsule ID or --default", field="capsule")
    if default:
        _calibrate_default(sample, seed, target)
        return
    from trifecta.cognitive.service import calibrate_capsule
    from trifecta.fleet.registry import CapsuleRegistry

    found = CapsuleRegistry().get(str(capsule))
    with console.status(f"calibrating {found.id} on its traffic"):
        stored = calibrate_capsule(found, target, sample=sample, seed=seed)
    console.print(
        f"{stored.capsule_id}: thresholds {stored.thresholds.values} rates {stored.rates} "
        f"(target {stored.target.kind} {stored.target.value}, version {stored.version})"
    )


@cognitive_app.command("thresholds")
def cognitive_thresholds() -> None:
    """The stored thresholds of every calibrated capsule, and the shipped defaults."""
    from trifecta.cognitive.service import default_calibration
    from trifecta.cognitive.store import ThresholdStore

    table = Table(title="escalation thresholds")
    for column in ("capsule", "signal", "thresholds", "rates", "target", "source", "version"):
        table.add_column(column)
    default = default_calibration()
    table.add_row(
        "(default)",
        default.thresholds.aggregate,
        _fmt(default.thresholds.values),
        _fmt(default.rates),
        f"{default.target.kind} {default.target.value}",
        "shipped",
        "-",
    )
    for stored in ThresholdStore().list():
        table.add_row(
            stored.capsule_id,
            stored.thresholds.aggregate,
            _fmt(stored.thresholds.values),
            _fmt(stored.rates),
            f"{stored.target.kind} {stored.target.value}",
            stored.source,
            str(stored.version),
        )
    console.print(table)


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in values.items())


@cognitive_app.command("eval")
def cognitive_eval(
    calibration_tasks: Annotated[
        int, typer.Option(min=50, help="held-out tasks to calibrate on")
    ] = 600,
    eval_tasks: Annotated[int, typer.Option(min=50, help="held-out tasks to report on")] = 1000,
    router_tasks: Annotated[int, typer.Option(min=50, help="train tasks for the router")] = 2000,
    budget: Annotated[float, typer.Option(help="compute budget, share of the largest tier")] = 0.40,
    seed: Annotated[int, typer.Option()] = 0,
    plot: Annotated[Path, typer.Option(help="where to save the PNG")] = Path("escalation.png"),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also save the figures as JSON")
    ] = None,
) -> None:
    """Accuracy against compute cost for every policy, RouteLLM's metrics, and the plot."""
    from trifecta.cognitive.evaluation import EvalConfig, evaluate
    from trifecta.cognitive.report import gap_table, goals, points_table
    from trifecta.cognitive.report import plot as draw

    config = EvalConfig(
        calibration_tasks=calibration_tasks,
        eval_tasks=eval_tasks,
        router_tasks=router_tasks,
        budget=budget,
        seed=seed,
    )
    with console.status("evaluating") as status:
        report = evaluate(config, progress=lambda msg: status.update(msg))
    console.print(points_table(report))
    console.print(gap_table(report))
    for goal, met, figures in goals(report):
        console.print(f"{'[green]met[/green]' if met else '[red]not met[/red]'}  {goal}: {figures}")
    console.print(f"plot saved to {draw(report, plot)}")
    if json_out is not None:
        from dataclasses import asdict

        json_out.write_text(
            json.dumps(
                {
                    "points": [asdict(p) for p in report.points],
                    "gap": [asdict(g) for g in report.gap],
                    "aurocs": report.aurocs,
                    "accuracy_by_grade": report.accuracy_by_grade,
                },
                indent=2,
            )
        )
