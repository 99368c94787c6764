"""`trifecta tl ...`: run, check, learn and compile Tensor Logic programs.

A bad program is one line `file:line:col: message` and exit code 2 (`tl check` lists every
error). numpy, scipy, numba, torch and IREE are imported inside the commands.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trifecta.core.errors import InvalidInput

if TYPE_CHECKING:
    from trifecta.tensorlogic.program import Program

tl_app = typer.Typer(
    help="Tensor Logic: rules as tensor equations (Boolean, embedding and learning modes).",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)

ProgramArg = Annotated[
    Path,
    typer.Argument(
        help="a .tl program, or a shipped one by name (plant, family, perceptron)",
        show_default=False,
    ),
]
FactsOption = Annotated[
    Path | None,
    typer.Option(
        "--facts", help="directory the program's CSV files are read from (default: beside it)"
    ),
]


def _load(program: Path, facts: Path | None) -> Program:
    from trifecta.tensorlogic.program import load_program

    if facts is not None and not facts.is_dir():
        raise InvalidInput(f"no such directory {str(facts)!r}", field="facts")
    return load_program(_resolve(program), facts_dir=facts)


def _resolve(program: Path) -> Path:
    """A file, or the name of a program the package ships (`plant`, `family`, `perceptron`)."""
    from trifecta.tensorlogic.assets import program_path, shipped_programs

    if not program.exists() and program.suffix == "" and str(program) in shipped_programs():
        return program_path(str(program))
    return program


@tl_app.command("check")
def check_command(program: ProgramArg, facts: FactsOption = None) -> None:
    """Report every error of a program without running it."""
    from trifecta.tensorlogic.program import ProgramError

    try:
        loaded = _load(program, facts)
    except ProgramError as exc:
        for line in exc.lines():
            typer.echo(line, err=True)
        sys.exit(2)  # (typer.Exit is swallowed by the non-standalone entry point)
    typer.echo(
        f"{program}: ok: {len(loaded.domains)} domains, {len(loaded.tensors)} tensors, "
        f"{len(loaded.equations)} equations, {len(loaded.queries)} queries"
    )


@tl_app.command("run")
def run_command(
    program: ProgramArg,
    facts: FactsOption = None,
    mode: Annotated[
        str, typer.Option(help="boolean (exact) or embedding (analogical)")
    ] = "boolean",
    temperature: Annotated[float, typer.Option(help="embedding mode: T of the step sigmoid")] = 0.1,
    embed_dim: Annotated[
        int, typer.Option(min=1, help="embedding mode: dimensions per object")
    ] = 32,
    limit: Annotated[int, typer.Option(min=1, help="rows shown per query")] = 50,
) -> None:
    """Evaluate a program and print its queries."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from trifecta.tensorlogic.engine import evaluate

    if mode not in ("boolean", "embedding"):
        raise InvalidInput(f"unknown mode {mode!r}", field="mode", allowed=["boolean", "embedding"])
    loaded = _load(program, facts)
    started = time.perf_counter()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("evaluating", total=None)

        def on_progress(group: str, rounds: int, change: float) -> None:
            what = "new pairs" if mode == "boolean" else "largest change"
            progress.update(task, description=f"{group}: round {rounds}, {what} {change:g}")

        result = evaluate(
            loaded,
            mode="embedding" if mode == "embedding" else "boolean",
            temperature=temperature,
            embed_dim=embed_dim,
            on_progress=on_progress,
        )
    elapsed = time.perf_counter() - started
    for query in loaded.queries:
        domains = loaded.tensors[query.tensor].domains
        console.print(escape(query.render(loaded) + "?"), style="bold")
        table = Table()
        for var, dom in zip(query.args, domains, strict=True):
            if isinstance(var, str):
                table.add_column(f"{var} ({dom})")
        table.add_column("value", justify="right")
        rows = result.answers(query, limit=limit)
        if not query.variables:
            table.add_row(f"{result.value(query):g}")
        for symbols, value in rows if query.variables else ():
            table.add_row(*symbols, f"{value:.4g}")
        console.print(table)
        if query.variables and len(rows) == limit:
            console.print(f"(first {limit} rows; --limit to see more)")
    summary = Table(title=f"{mode} evaluation in {elapsed:.3f} s", title_justify="left")
    for column in ("tensor", "shape", "entries", "rounds"):
        summary.add_column(column, justify="left" if column == "tensor" else "right")
    for name in sorted(loaded.defined_by_equations()):
        summary.add_row(
            name,
            "x".join(map(str, loaded.shape(name))),
            str(result.count(name)),
            str(result.rounds.get(name, 0)),
        )
    console.print(summary)


@tl_app.command("learn")
def learn_command(
    program: ProgramArg,
    facts: FactsOption = None,
    steps: Annotated[int, typer.Option(min=1, help="gradient steps (central) or rounds")] = 300,
    lr: Annotated[float, typer.Option(min=0.0, help="learning rate")] = 0.1,
    partition: Annotated[
        list[Path] | None,
        typer.Option(help="a site's facts directory; repeat for federated averaging over sites"),
    ] = None,
    local_steps: Annotated[int, typer.Option(min=1, help="federated: SGD steps per round")] = 1,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="federated sites as Ray actors on this cluster (e.g. 10.0.0.1:6379); each "
            "--partition is then RESOURCE=DIR, the actor pinned to the node offering RESOURCE"
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the fitted tensors (.npz)")] = None,
    seed: int = 0,
) -> None:
    """Fit the learnable tensors from the examples: centrally, or by federated averaging
    with one process per --partition (its files never leave that process), or one Ray actor
    per partition on its own node with --ray-address."""
    import numpy as np
    from rich.progress import BarColumn, Progress, TextColumn

    from trifecta.tensorlogic.federated import Federation
    from trifecta.tensorlogic.learn import fit

    with Progress(
        TextColumn("{task.description}"), BarColumn(), console=err_console, transient=True
    ) as bar:
        if partition:
            task = bar.add_task("federated rounds", total=steps + 1)
            if ray_address is None:
                for site in partition:
                    if not site.is_dir():
                        raise InvalidInput(f"no such directory {str(site)!r}", field="partition")
                federation = Federation(program, partition)
            else:
                from trifecta.tensorlogic.ray_sites import RayPartition, ray_federation

                # a partition's directory is a path on its own node: not checked here
                parts = [RayPartition.parse(str(p)) for p in partition]
                federation = ray_federation(program, parts, address=ray_address)
            with federation:
                fed = federation.fit(
                    rounds=steps,
                    local_steps=local_steps,
                    lr=lr,
                    seed=seed,
                    on_round=lambda r, loss: bar.update(
                        task, completed=r, description=f"round {r}: loss {loss:.4f}"
                    ),
                )
            where = "Ray actors" if ray_address else "sites"
            params, losses, how = fed.params, fed.losses, f"federated over {len(partition)} {where}"
        else:
            task = bar.add_task("steps", total=steps)
            result = fit(
                _load(program, facts),
                steps=steps,
                lr=lr,
                seed=seed,
                on_step=lambda s, loss: bar.update(
                    task, completed=s + 1, description=f"step {s + 1}: loss {loss:.4f}"
                ),
            )
            params, losses, how = result.params, result.losses, "central"
    console.print(f"learning ({how})")
    table = Table()
    table.add_column("loss before", justify="right")
    table.add_column("loss after", justify="right")
    table.add_row(f"{losses[0]:.5f}", f"{losses[-1]:.5f}")
    console.print(table)
    for name, value in params.items():
        console.print(f"{name} {value.shape}:\n{np.array2string(value, precision=3)}", markup=False)
    if out is not None:
        np.savez(out, **params)  # type: ignore[arg-type]
        console.print(f"wrote {out}")


@tl_app.command("compile")
def compile_command(
    program: ProgramArg,
    facts: FactsOption = None,
    target: Annotated[str, typer.Option(help="host or riscv32 (the Coral NPU core)")] = "host",
    out: Annotated[
        Path | None, typer.Option(help="the IREE module to write (default: NAME.TARGET.vmfb here)")
    ] = None,
) -> None:
    """Lower every equation to MLIR linalg and compile it with IREE."""
    from trifecta.tensorlogic.mlir import TARGETS, compile_equations

    if target not in TARGETS:
        raise InvalidInput(f"unknown target {target!r}", field="target", allowed=TARGETS)
    loaded = _load(program, facts)
    compiled = compile_equations(loaded, "riscv32" if target == "riscv32" else "host")
    path = out or Path(f"{program.stem}.{target}.vmfb")  # in the working directory
    path.write_bytes(compiled.vmfb)
    console.print(f"{program.name} for {target}: {compiled.size} bytes -> {path}", markup=False)
    table = Table()
    table.add_column("function")
    table.add_column("equation", justify="right")
    for name, eq in zip(compiled.functions, loaded.equations, strict=True):
        table.add_row(name, f"line {eq.pos.line}")
    console.print(table)
