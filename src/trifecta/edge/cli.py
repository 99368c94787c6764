"""`trifecta edge ...`: train, inspect, run and serve the edge model; run nodes and the mesh.

Heavy libraries (torch, numba, IREE, the MCP SDK) are imported inside the commands so that
`trifecta --help` stays fast. Also runnable alone: `python -m trifecta.edge.cli node ...`
(how the mesh starts node processes).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from trifecta.core.cli_options import Port
from trifecta.core.errors import InvalidInput

edge_app = typer.Typer(
    help="Edge layer: BitNet b1.58 model, torch-free runtime, IREE artifacts, MCP edge mesh.",
    no_args_is_help=True,
)
console = Console()

ModelOption = Annotated[
    Path | None, typer.Option("--model", help="edge-model artifact (default: the shipped one)")
]


def _model_path(model: Path | None) -> Path:
    from trifecta.edge.assets import shipped_model_path

    return model if model is not None else shipped_model_path()


@edge_app.command("train")
def train_command(
    out: Annotated[Path, typer.Option(help="where to write the packed artifact")] = Path(
        "edge-model.safetensors"
    ),
    recipe: Annotated[
        Path | None, typer.Option(help="a recipe JSON (e.g. the shipped model's) to start from")
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1)] = None,
    seed: int | None = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    layout: Annotated[str | None, typer.Option(help="i2 (2 bits) or b3 (base 3, 1.6 bits)")] = None,
    evaluate: Annotated[
        int, typer.Option(help="held-out tasks per grade to evaluate (0: skip)", min=0)
    ] = 200,
) -> None:
    """Train the edge model quantisation-aware (seeded); write the artifact, its recipe and
    its held-out accuracy per grade (also recorded in the artifact)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from trifecta.edge.evaluate import accuracy_by_difficulty
    from trifecta.edge.runtime import EdgeRuntime
    from trifecta.edge.train import TrainConfig, save_recipe, train

    base = json.loads(recipe.read_text()) if recipe is not None else {}
    options = {"steps": steps, "seed": seed, "batch_size": batch_size, "layout": layout}
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
    }
    artifact = result.artifact
    if evaluate:
        grades = accuracy_by_difficulty(EdgeRuntime(artifact), per_grade=evaluate)
        artifact = artifact.with_accuracy({g.difficulty: g.accuracy for g in grades})
        report["heldout_accuracy"] = {str(g): a for g, a in artifact.accuracy.items()}
        report["heldout_tasks_per_grade"] = evaluate
    artifact.save(out)
    save_recipe(config, out.with_suffix(".recipe.json"))
    out.with_suffix(".report.json").write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {out} ({out.stat().st_size} bytes); {json.dumps(report)}")


@edge_app.command("info")
def info_command(model: ModelOption = None) -> None:
    """Describe an artifact: layout, shapes, sizes, content hashes."""
    from trifecta.edge.artifact import EdgeArtifact, describe, read_bytes_hash

    path = _model_path(model)
    summary = describe(EdgeArtifact.load(path))
    summary.update(
        {"path": str(path), "file_bytes": path.stat().st_size, "file_sha256": read_bytes_hash(path)}
    )
    console.print_json(json.dumps(summary))


@edge_app.command("kernels")
def kernels_command() -> None:
    """The ternary kernels, and which run on this CPU (with the reason when not)."""
    from trifecta.edge.kernels import KERNELS, available_kernels, select_kernel
    from trifecta.edge.kernels.cpu import host_cpu

    table = Table("kernel", "bits/weight", "runs here", "description", title=f"CPU: {host_cpu()}")
    for name, reason in available_kernels().items():
        spec = KERNELS[name]
        table.add_row(
            name,
            f"{spec.bits_per_weight:g}",
            "yes" if reason is None else f"no: {reason}",
            spec.description,
        )
    console.print(table)
    console.print(f"chosen by default: {select_kernel().name}")


@edge_app.command("generate")
def generate_command(
    prompts: Annotated[list[str], typer.Argument(help="task prompts, e.g. '41+17?'")],
    model: ModelOption = None,
    kernel: Annotated[
        str, typer.Option(help="auto or a kernel name (see `trifecta edge kernels`)")
    ] = "auto",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 6,
) -> None:
    """Answer prompts with the torch-free runtime."""
    from trifecta.edge.runtime import EdgeRuntime

    runtime = EdgeRuntime.load(_model_path(model), kernel=kernel)
    for prompt, g in zip(
        prompts, runtime.generate(prompts, max_new_tokens=max_new_tokens), strict=True
    ):
        console.print(
            f"{prompt} -> {g.text!r} (mean entropy {statistics.fmean(g.entropies or [0.0]):.3f})"
        )


@edge_app.command("eval")
def eval_command(
    model: ModelOption = None,
    per_grade: Annotated[int, typer.Option(min=1)] = 200,
    kernel: str = "auto",
) -> None:
    """Accuracy per task grade on held-out tasks, with the torch-free runtime."""
    from trifecta.edge.evaluate import accuracy_by_difficulty
    from trifecta.edge.runtime import EdgeRuntime

    runtime = EdgeRuntime.load(_model_path(model), kernel=kernel)
    table = Table("grade", "light", "accuracy", "correct/total")
    for g in accuracy_by_difficulty(runtime, per_grade=per_grade):
        table.add_row(
            str(g.difficulty),
            "yes" if g.difficulty <= 2 else "no",
            f"{g.accuracy:.1%}",
            f"{g.correct}/{g.total}",
        )
    console.print(table)


@edge_app.command("compile")
def compile_command(
    target: Annotated[
        str, typer.Option(help="host or riscv32 (the Coral NPU's scalar core)")
    ] = "riscv32",
    out: Annotated[
        Path | None, typer.Option(help="output .vmfb (default: edge-<target>.vmfb)")
    ] = None,
    model: ModelOption = None,
) -> None:
    """Compile the model's BitLinear layers with IREE."""
    from trifecta.edge.artifact import EdgeArtifact
    from trifecta.edge.npu import TARGETS, compile_model

    if target not in TARGETS:
        raise InvalidInput(f"unknown target {target!r}", field="target", allowed=TARGETS)
    with console.status(f"compiling for {target} with IREE"):
        compiled = compile_model(EdgeArtifact.load(_model_path(model)), target)
    path = compiled.save(out or Path(f"edge-{target}.vmfb"))
    console.print(f"wrote {path}: {compiled.size} bytes, {len(compiled.layers)} layers")


@edge_app.command("profiles")
def profiles_command(
    model: ModelOption = None,
    phase: Annotated[str, typer.Option(help="dev, pilot or full (prices)")] = "dev",
    layout: Annotated[str, typer.Option(help="i2 (2 bits) or b3 (base 3, 1.6 bits)")] = "i2",
) -> None:
    """Throughput, power and price of the edge model on each edge accelerator."""
    from trifecta.core.settings import PHASES
    from trifecta.edge.artifact import EdgeArtifact
    from trifecta.edge.packing import LAYOUTS
    from trifecta.edge.profiles import edge_profiles

    # Checked before the model loads: both are choices, and a typo was a KeyError traceback.
    if layout not in LAYOUTS:
        raise InvalidInput(f"unknown layout {layout!r}", field="layout", allowed=LAYOUTS)
    if phase not in PHASES:
        raise InvalidInput(f"unknown phase {phase!r}", field="phase", allowed=PHASES)
    config = EdgeArtifact.load(_model_path(model)).config
    table = Table("accelerator", "tokens/s", "bound", "W", "J/token", "$/hour", "$/1M tokens")
    for p in edge_profiles(config, phase=phase, layout=layout):
        table.add_row(
            p.accelerator,
            f"{p.tokens_per_s:,.0f}",
            p.bound,
            f"{p.power_w:g}",
            f"{p.joules_per_token:.2e}",
            f"{p.price_per_hour:.2f}",
            f"{p.usd_per_million_tokens:.4f}",
        )
    console.print(table)
    console.print(f"utilisation assumed: {p.utilisation:.0%} of the roofline")


@edge_app.command("node")
def node_command(
    name: Annotated[str, typer.Option(help="node name")],
    port: Port = 8701,
    host: str = "127.0.0.1",
    data_dir: Annotated[
        Path | None, typer.Option(help="artifact store (default: data dir/edge/nodes/<name>)")
    ] = None,
    environment: Annotated[str, typer.Option(help="environment name in the topology")] = "edge",
    kind: str = "edge",
    jurisdiction: Annotated[
        str | None, typer.Option(help="legal region of the environment")
    ] = None,
    capacity: Annotated[int, typer.Option(min=1, help="requests accepted at once")] = 4,
    kernel: str = "auto",
    threads: Annotated[int, typer.Option(min=1)] = 1,
    model: Annotated[
        Path | None, typer.Option(help="preload this artifact (otherwise wait for the mesh)")
    ] = None,
) -> None:
    """Run an edge node: an MCP server (streamable HTTP at /mcp) around the runtime. With a
    federation credential configured (`trifecta up` sets one), only peers presenting it are
    answered."""
    from trifecta.core.settings import get_settings
    from trifecta.edge.node import EdgeNode, NodeConfig, NodePlace, serve_node

    settings = get_settings()
    config = NodeConfig(
        name=name,
        environment=NodePlace(name=environment, kind=kind, jurisdiction=jurisdiction),
        data_dir=data_dir or settings.artifacts_dir("edge", "nodes", name),
        capacity=capacity,
        kernel=None if kernel == "auto" else kernel,
        threads=threads,
    )
    node = EdgeNode(config)
    if model is not None:
        data = model.read_bytes()
        from trifecta.edge.store import sha256_hex

        answer = node.put_artifact("model", model.stem, sha256_hex(data), data)
        if answer.status != "stored":
            raise InvalidInput(answer.message, field="model")
    if settings.federation_credential is None:
        console.print("no federation credential configured: any peer may use this node")
    serve_node(node, host, port, credential=settings.federation_credential)


@edge_app.command("mesh")
def mesh_command(
    node: Annotated[
        list[str] | None, typer.Option("--node", help="MCP URL of a running node (repeat)")
    ] = None,
    spawn: Annotated[int, typer.Option(min=0, help="start this many local node processes")] = 0,
    model: ModelOption = None,
    duration: Annotated[float, typer.Option(help="seconds to run (0: until Ctrl-C)", min=0)] = 0.0,
    requests: Annotated[
        int, typer.Option(help="light requests to send as a demonstration", min=0)
    ] = 0,
) -> None:
    """Run the edge mesh: track nodes by heartbeat, sync the model to them, offload requests."""
    from trifecta.core.settings import get_settings
    from trifecta.edge.mesh_cli import run_mesh

    if not node and not spawn:
        raise InvalidInput("give --node URLs or --spawn N", field="node")
    run_mesh(
        list(node or []),
        spawn,
        _model_path(model),
        duration,
        requests,
        get_settings().artifacts_dir("edge"),
        console,
    )


def main() -> None:
    """Standalone entry (node processes): expected failures print one line and exit 2."""
    import sys

    from trifecta.core.errors import TrifectaError

    try:
        edge_app(standalone_mode=False)
    except TrifectaError as exc:
        console.print(f"trifecta edge: error: {exc.one_line()}", style="red")
        sys.exit(2)


if __name__ == "__main__":
    main()
