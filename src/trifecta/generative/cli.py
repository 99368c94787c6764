"""`trifecta generative ...`: train, evaluate and run the MoE diffusion model; per-capsule
expert masks and router biases.

Heavy libraries (torch, safetensors) are imported inside the commands so that
`trifecta --help` stays fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from trifecta.core.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from trifecta.generative.decoding import DecodeConfig
    from trifecta.generative.model import DiffusionLM

generative_app = typer.Typer(
    help="Generative layer: MoE masked-diffusion model, per-capsule experts and router biases.",
    no_args_is_help=True,
)
mask_app = typer.Typer(
    help="Per-capsule expert masks (selective activation).", no_args_is_help=True
)
generative_app.add_typer(mask_app, name="mask")
console = Console()

ModelOption = Annotated[
    Path | None, typer.Option("--model", help="model file (default: the shipped one)")
]
StepsOption = Annotated[int, typer.Option(help="denoising steps over the response")]
ParallelOption = Annotated[
    bool, typer.Option("--parallel/--sequential", help="Fast-dLLM threshold unmasking or not")
]


def _load(model: Path | None) -> DiffusionLM:
    from trifecta.generative.artifact import load_model
    from trifecta.generative.assets import shipped_model_path

    return load_model(model if model is not None else shipped_model_path())


def _decode_config(steps: int, parallel: bool, threshold: float | None = None) -> DecodeConfig:
    """The served decoding with these steps; `threshold` None: the served threshold."""
    from trifecta.generative.decoding import DecodeConfig

    served = DecodeConfig()
    if not parallel:
        threshold = None
    elif threshold is None:
        threshold = served.threshold
    return DecodeConfig.model_validate(
        served.model_dump() | {"steps": steps, "threshold": threshold}
    )


def _experts(text: str) -> list[int]:
    try:
        return [int(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise InvalidInput(
            f"expected comma-separated expert ids, got {text!r}", field="experts"
        ) from None


@generative_app.command("train")
def train_command(
    out: Annotated[Path, typer.Option(help="where to write the model")] = Path(
        "diffusion-moe.safetensors"
    ),
    recipe: Annotated[
        Path | None, typer.Option(help="a recipe JSON (e.g. the shipped model's) to start from")
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1)] = None,
    seed: int | None = None,
    evaluate: Annotated[
        int, typer.Option(help="held-out tasks per grade to evaluate (0: skip)", min=0)
    ] = 200,
) -> None:
    """Convert a shipped AR tier to a MoE diffusion model and train it (seeded); write the
    model, its recipe and its held-out accuracy per grade."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from trifecta.generative.artifact import load_model, save_model
    from trifecta.generative.decoding import Decoder
    from trifecta.generative.evaluate import heldout_report
    from trifecta.generative.train import TrainConfig, train

    base = json.loads(recipe.read_text()) if recipe is not None else {}
    options = {"steps": steps, "seed": seed}
    config = TrainConfig.model_validate(base | {k: v for k, v in options.items() if v is not None})
    started = time.time()
    with Progress(
        TextColumn("training"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("train", total=config.steps, loss="-")
        result = train(
            config, lambda step, loss: progress.update(task, completed=step + 1, loss=f"{loss:.3f}")
        )
    report: dict[str, object] = {
        "train_seconds": round(time.time() - started, 1),
        "final_loss": round(result.final_loss, 4),
        "parameters": result.model.parameter_count(),
    }
    save_model(result.model, out)
    if evaluate:
        # the shipped float16 weights, not the float32 ones still in memory
        report |= heldout_report(Decoder(load_model(out)), evaluate)
    out.with_suffix(".recipe.json").write_text(config.model_dump_json(indent=2) + "\n")
    out.with_suffix(".report.json").write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {out} ({out.stat().st_size} bytes); {json.dumps(report)}")


@generative_app.command("eval")
def eval_command(
    model: ModelOption = None,
    per_grade: Annotated[int, typer.Option(min=1)] = 200,
    steps: StepsOption = 24,
    parallel: ParallelOption = True,
    threshold: Annotated[
        float | None, typer.Option(help="confidence to unmask in parallel (default: served)")
    ] = None,
    capsule: Annotated[str | None, typer.Option(help="route with this capsule's mask")] = None,
) -> None:
    """Held-out accuracy per grade, tokens/s and forward passes."""
    from trifecta.generative.decoding import Decoder
    from trifecta.generative.evaluate import evaluate, heldout_tasks

    net = _load(model)
    config = _decode_config(steps, parallel, threshold)
    routing = None
    if capsule is not None:
        from trifecta.generative.service import GenerativeService

        service = GenerativeService(net, online_load=False)
        if service.store.mask(capsule) is None:
            raise NotFound(f"capsule {capsule!r} has no expert mask", field="capsule")
        routing, _, _ = service.routing_for(capsule)
    run = evaluate(Decoder(net), heldout_tasks(per_grade), config, routing=routing)
    table = Table("grade", "accuracy", "tasks", title="held-out accuracy")
    for g in run.grades:
        table.add_row(str(g.difficulty), f"{g.accuracy:.1%}", str(g.tasks))
    console.print(table)
    console.print(
        f"{run.tokens_per_second:,.0f} tokens/s, {run.forward_passes} forward passes, "
        f"{run.seconds:.1f} s"
    )


@generative_app.command("generate")
def generate_command(
    prompts: Annotated[list[str], typer.Argument(help="task-family prompts, batched")],
    model: ModelOption = None,
    steps: StepsOption = 24,
    parallel: ParallelOption = True,
    capsule: Annotated[
        str | None, typer.Option(help="serve as this capsule (its mask and biases, tuned online)")
    ] = None,
) -> None:
    """Complete prompts (one batch); with --capsule through the service, as the product does."""
    from trifecta.generative.service import GenerativeRequest, GenerativeService

    net = _load(model)
    if capsule is None:
        from trifecta.generative.decoding import Decoder
        from trifecta.generative.sequences import answer_of

        results, _ = Decoder(net).decode(prompts, _decode_config(steps, parallel))
        for prompt, result in zip(prompts, results, strict=True):
            console.print(
                f"{prompt} -> {result.text}  answer {answer_of(result.text)}  "
                f"({result.steps} steps)"
            )
        return
    service = GenerativeService(net)
    requests = [
        GenerativeRequest(capsule_id=capsule, prompt=p, steps=steps, parallel=parallel)
        for p in prompts
    ]
    for response in service.complete_batch(requests):
        console.print_json(response.model_dump_json(exclude={"tokens", "expert_load"}))


@generative_app.command("biases")
def biases_command(
    capsule: Annotated[str, typer.Argument(help="capsule id")],
    revert: Annotated[
        int | None, typer.Option(help="append a version equal to version N (0: all zero)", min=0)
    ] = None,
) -> None:
    """A capsule's router-bias history (every update is a version), or revert to one."""
    from trifecta.generative.store import GenerativeStore

    store = GenerativeStore()
    if revert is not None:
        shape = _model_shape()
        version = store.revert_bias(capsule, revert, shape)
        console.print(f"{capsule}: biases are now version {version.version} ({version.reason})")
        return
    history = store.bias_history(capsule)
    if not history:
        console.print(f"{capsule}: no bias updates (all zero)")
        return
    table = Table("version", "reason", "max |bias|", "created", title=f"router biases: {capsule}")
    for v in history:
        table.add_row(
            str(v.version),
            v.reason,
            f"{float(v.tensor().abs().max()):.4f}",
            str(v.created_at or ""),
        )
    console.print(table)


def _model_shape() -> tuple[int, int]:
    from trifecta.generative.artifact import load_model
    from trifecta.generative.assets import shipped_model_path

    config = load_model(shipped_model_path()).config
    return config.n_layers, config.n_experts


@mask_app.command("set")
def mask_set(
    capsule: Annotated[str, typer.Argument(help="capsule id")],
    experts: Annotated[str, typer.Option(help="comma-separated expert ids, every layer")],
) -> None:
    """Configure a capsule's experts (the same in every layer)."""
    from trifecta.generative.artifact import load_model
    from trifecta.generative.assets import shipped_model_path
    from trifecta.generative.selection import configured_mask
    from trifecta.generative.store import GenerativeStore

    config = load_model(shipped_model_path()).config
    mask = configured_mask(_experts(experts), config.n_layers)
    mask.validate_for(config.n_layers, config.n_experts, config.top_k)
    GenerativeStore().put_mask(capsule, mask)
    console.print(f"{capsule}: experts {mask.layers}")


@mask_app.command("learn")
def mask_learn(
    capsule: Annotated[str, typer.Argument(help="capsule id")],
    rule: Annotated[
        str,
        typer.Option(
            help="verified: drop experts while verified answers stay right; traffic; half: "
            "half of each layer's experts, the dropped ones merged into the kept ones"
        ),
    ] = "verified",
    tolerance: Annotated[
        float, typer.Option(help="verified: share of reference successes a mask may lose")
    ] = 0.01,
    check_tasks: Annotated[
        int | None, typer.Option(help="verified: reference tasks to check on [default: 150]")
    ] = None,
    domain: Annotated[
        str | None, typer.Option(help="verified: task domain (default: the capsule's)")
    ] = None,
    coverage: Annotated[float, typer.Option(help="traffic: share of routed tokens to keep")] = 0.9,
) -> None:
    """Learn a capsule's mask: from verified successes (default), its traffic share alone, or
    half of each layer's experts with the dropped ones merged in."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trifecta.generative.decoding import Decoder
    from trifecta.generative.mask_check import (
        DEFAULT_CHECK_TASKS,
        learn_verified_mask,
        loss_bound,
    )
    from trifecta.generative.selection import half_mask, learn_mask
    from trifecta.generative.store import GenerativeStore

    if rule not in ("verified", "traffic", "half"):
        raise InvalidInput(f"expected verified, traffic or half, got {rule!r}", field="rule")
    store = GenerativeStore()
    traffic = store.traffic(capsule)
    model = _load(None)
    config = model.config
    if rule == "traffic":
        if traffic is None:
            raise NotFound(f"capsule {capsule!r} has no recorded traffic", field="capsule")
        mask = learn_mask(traffic[0], coverage, config.top_k)
        store.put_mask(capsule, mask)
        console.print(f"{capsule}: learned from {traffic[1]} requests: experts {mask.layers}")
        return
    if rule == "half":
        from trifecta.generative.assets import shipped_granularity

        if traffic is None:
            raise NotFound(f"capsule {capsule!r} has no recorded traffic", field="capsule")
        mask = half_mask(traffic[0], shipped_granularity(), config.top_k, model.router_weights())
        store.put_mask(capsule, mask)
        console.print(
            f"{capsule}: half mask from {traffic[1]} requests: experts {mask.layers}, each "
            "dropped expert merged into a kept one"
        )
        return
    domain = domain or _capsule_domain(capsule)
    check_tasks = DEFAULT_CHECK_TASKS if check_tasks is None else check_tasks
    bias = store.current_bias(capsule, (config.n_layers, config.n_experts)).tensor()
    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("dropped {task.fields[dropped]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task(
            f"decoding {check_tasks} reference tasks, then each expert",
            total=config.n_layers * config.n_experts,
            dropped=0,
        )

        def advance(layer: int, expert: int, dropped: bool) -> None:
            done = progress.tasks[0]
            progress.update(
                bar,
                advance=1,
                dropped=done.fields["dropped"] + int(dropped),
                description=f"checking layer {layer} expert {expert}",
            )

        mask, check = learn_verified_mask(
            Decoder(model),
            traffic=traffic[0] if traffic is not None else None,
            domain=domain,
            tolerance=tolerance,
            check_tasks=check_tasks,
            bias=bias,
            on_trial=advance,
        )
    store.put_mask(capsule, mask)
    n = len(check.successes)
    console.print(
        f"{capsule}: {mask.active_count()} of {config.n_layers * config.n_experts} experts kept, "
        f"{n} verified successes of {check.tasks} {domain or 'any'}-domain "
        f"tasks checked ({check.trials} trials, {time.perf_counter() - started:.0f} s): "
        f"experts {mask.layers}; the mask lost {check.lost} of the {n} (95% bound on the "
        f"share it loses at large: {loss_bound(check.lost, n):.1%})"
    )


def _capsule_domain(capsule: str) -> str | None:
    """The capsule's domain from the registry (None: not registered, any domain)."""
    from trifecta.fleet.registry import CapsuleRegistry

    try:
        return CapsuleRegistry().get(capsule).domain
    except NotFound:
        return None


@mask_app.command("show")
def mask_show(capsule: Annotated[str, typer.Argument(help="capsule id")]) -> None:
    from trifecta.generative.store import GenerativeStore

    mask = GenerativeStore().mask(capsule)
    if mask is None:
        raise NotFound(f"capsule {capsule!r} has no expert mask", field="capsule")
    console.print(f"{capsule}: {mask.source} experts {mask.layers}")


@mask_app.command("clear")
def mask_clear(capsule: Annotated[str, typer.Argument(help="capsule id")]) -> None:
    from trifecta.generative.store import GenerativeStore

    if not GenerativeStore().clear_mask(capsule):
        raise NotFound(f"capsule {capsule!r} has no expert mask", field="capsule")
    console.print(f"{capsule}: mask cleared (every expert active)")


def apply_placement(
    loads: str | None = None,
    trace: Path | None = None,
    *,
    add: int = 0,
    remove: str | None = None,
    target: float | None = None,
    time_limit: float | None = None,
) -> None:
    """`placement --apply` / `expand --apply`: rebalance the placement the running services
    serve (the newest stored one; none yet: the one a service would start with) from the
    traffic stored for every capsule, each MoE layer on its own, with the fewest moves that
    reach the target, nodes added or removed; store it as a new version, which every
    service on placed nodes follows within its `placement_check_s`. Prints each layer's
    max/mean before and after and the experts moved, beside a from-scratch repack's. The
    traffic decays with `traffic_half_life_s`, as the services' starts read it."""
    from trifecta.generative.ray_experts import initial_placements
    from trifecta.generative.rebalance import check_node_change, plan_rebalance
    from trifecta.generative.settings import GenerativeSettings
    from trifecta.generative.store import GenerativeStore

    if loads is not None or trace is not None:
        raise InvalidInput(
            "--apply places every layer from the stored traffic; give no --loads or --trace",
            field="loads",
        )
    try:
        removed = [int(n) for n in remove.split(",")] if remove else []
    except ValueError as exc:
        raise InvalidInput("node indices must be integers", field="remove") from exc
    settings = GenerativeSettings()
    update = {"rebalance_target": target, "rebalance_time_limit_s": time_limit}
    settings = settings.model_copy(update={k: v for k, v in update.items() if v is not None})
    store = GenerativeStore()
    traffic = store.traffic_total(half_life_s=settings.traffic_half_life_s)
    stored = store.latest_placement()
    if stored is None:
        if settings.expert_nodes == 0:
            raise InvalidInput(
                "no placement is stored and the service runs its experts in the model: set "
                "expert_nodes (or start a service on a Ray cluster)",
                field="expert_nodes",
            )
        n_layers, n_experts = _model_shape()
        start = initial_placements(
            n_layers,
            n_experts,
            settings.expert_nodes,
            slots_per_node=settings.slots_per_node,
            loads=None if traffic is None else traffic[0].numpy(),
        )
        current, version = start, 0
    else:
        current, version = stored.layers, stored.version
    check_node_change(current[0].cluster.nodes, add, removed, settings)
    if traffic is None and not add and not removed:
        raise NotFound("no traffic is recorded yet: nothing to place from", field="loads")
    import numpy as np

    shape = (len(current), current[0].num_experts)
    weights = traffic[0].numpy().astype(np.float64) if traffic is not None else np.zeros(shape)
    new, report = plan_rebalance(
        current, weights, settings, add=add, remove=removed, loads_from="traffic"
    )
    change = f", {add} node(s) added" if add else ""
    change += f", nodes {removed} removed" if removed else ""
    requests = traffic[1] if traffic is not None else 0
    put = store.put_placement(
        new, report, f"apply: {requests} requests' traffic{change}", removed if stored else None
    )
    table = Table(
        "layer",
        "nodes",
        "max/mean before",
        "after",
        "experts moved",
        "from-scratch repack",
        title=f"placement version {put.version} (from {version or 'a fresh start'})",
    )
    for row, placement in zip(report, new, strict=True):
        table.add_row(
            str(row.layer),
            str(placement.cluster.nodes),
            f"{row.before:.4f}",
            f"{row.after:.4f}",
            str(row.moves),
            "-"
            if row.scratch_moves is None
            else f"{row.scratch_after:.4f} with {row.scratch_moves} moves",
        )
    console.print(table)
    console.print(
        f"stored; services on placed nodes follow it within {settings.placement_check_s:g} s "
        f"(from {requests} requests' traffic)"
    )


# Expert placement and node expansion (`placement`, `expand`) live in their own module.
from trifecta.generative.placement_cli import register_placement_commands  # noqa: E402

register_placement_commands(generative_app)
