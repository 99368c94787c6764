"""`trifecta generative placement|expand`: place MoE experts on nodes from measured load, and
rebalance with few moves when nodes are added or removed.

The generative Typer app (in `cli.py`) calls `register_placement_commands`. numpy and scipy
are imported inside the commands so that `trifecta --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from trifecta.core.errors import InvalidInput

if TYPE_CHECKING:
    import numpy as np

    from trifecta.generative.placement import Cluster, Placement

console = Console()

LoadsOption = Annotated[
    str | None,
    typer.Option(help="per-expert token counts: comma-separated, or a JSON file of a list"),
]
TraceOption = Annotated[
    Path | None,
    typer.Option(help="a routing trace: a text file of expert ids (whitespace-separated)"),
]
ExpertsOption = Annotated[
    int | None, typer.Option(min=1, help="number of experts (default: from the loads)")
]
NodesOption = Annotated[int, typer.Option(min=1, help="nodes in the cluster")]
SlotsOption = Annotated[
    int | None, typer.Option(min=1, help="expert slots per node (or give --memory-bytes)")
]
MemoryOption = Annotated[
    int | None, typer.Option(min=1, help="memory per node for experts, in bytes")
]
ExpertBytesOption = Annotated[
    int | None, typer.Option(min=1, help="bytes of one expert's weights (with --memory-bytes)")
]
RedundancyOption = Annotated[
    float,
    typer.Option(help="redundant slots as a share of the experts (used without --slots-per-node)"),
]

APPLY_HELP = (
    "rebalance the placement the services run (stored) from the traffic stored for every "
    "capsule, each layer, fewest moves; the services follow it"
)


def _read_loads(loads: str | None, trace: Path | None, experts: int | None) -> np.ndarray:
    from trifecta.generative.placement import loads_from_trace, parse_loads

    if (loads is None) == (trace is None):
        raise InvalidInput("give exactly one of --loads or --trace", field="loads")
    if trace is not None:
        if not trace.is_file():
            raise InvalidInput(f"no such file {trace}", field="trace")
        try:
            ids = [int(token) for token in trace.read_text().split()]
        except ValueError as exc:
            raise InvalidInput("expert ids must be integers", field="trace") from exc
        return loads_from_trace(ids, experts)
    assert loads is not None
    path = Path(loads)
    values = json.loads(path.read_text()) if path.is_file() else loads.split(",")
    return parse_loads(values, experts)


def _cluster(
    nodes: int,
    experts: int,
    slots_per_node: int | None,
    memory_bytes: int | None,
    expert_bytes: int | None,
    redundancy: float,
) -> Cluster:
    from trifecta.generative.placement import Cluster

    if slots_per_node is not None:
        return Cluster.uniform(nodes, slots_per_node)
    if memory_bytes is not None or expert_bytes is not None:
        if memory_bytes is None or expert_bytes is None:
            raise InvalidInput("give both --memory-bytes and --expert-bytes", field="memory_bytes")
        return Cluster.from_memory(nodes, memory_bytes, expert_bytes)
    return Cluster.with_redundancy(nodes, experts, redundancy)


def _placement_table(placement: Placement, loads: np.ndarray, title: str) -> Table:
    node_loads = placement.node_loads(loads)
    mean = float(node_loads.mean()) or 1.0
    table = Table("node", "slots used", "load", "load / mean", "experts", title=title)
    for node, (experts, load) in enumerate(zip(placement.nodes, node_loads, strict=True)):
        table.add_row(
            str(node),
            f"{len(experts)}/{placement.cluster.slots[node]}",
            f"{load:.1f}",
            f"{load / mean:.3f}",
            " ".join(str(e) for e in sorted(experts)),
        )
    return table


def placement_command(
    loads: LoadsOption = None,
    trace: TraceOption = None,
    experts: ExpertsOption = None,
    nodes: NodesOption = 8,
    slots_per_node: SlotsOption = None,
    memory_bytes: MemoryOption = None,
    expert_bytes: ExpertBytesOption = None,
    redundancy: RedundancyOption = 0.1,
    method: Annotated[str, typer.Option(help="auto, greedy or milp")] = "auto",
    out: Annotated[Path | None, typer.Option(help="write the placement as JSON")] = None,
    apply: Annotated[bool, typer.Option("--apply", help=APPLY_HELP)] = False,
) -> None:
    """Replicate the hottest experts and pack the replicas on nodes so that the most loaded
    node is as close to the mean as the slots allow; print each node and max/mean load."""
    from trifecta.generative.placement import place, round_robin

    if apply:  # the running service's placement (`cli.apply_placement`)
        from trifecta.generative.cli import apply_placement

        apply_placement(loads, trace)
        return
    load_vector = _read_loads(loads, trace, experts)
    cluster = _cluster(
        nodes, len(load_vector), slots_per_node, memory_bytes, expert_bytes, redundancy
    )
    placement = place(load_vector, cluster, method=method)
    baseline = round_robin(len(load_vector), cluster)
    console.print(_placement_table(placement, load_vector, f"placement ({placement.method})"))
    console.print(
        f"max/mean load {placement.imbalance(load_vector):.4f} "
        f"(round-robin {baseline.imbalance(load_vector):.4f}); "
        f"{placement.replica_count()} replicas of {len(load_vector)} experts "
        f"in {cluster.total_slots} slots"
    )
    if out is not None:
        out.write_text(placement.model_dump_json(indent=2) + "\n")
        console.print(f"wrote {out}")


def expand_command(
    placement_file: Annotated[
        Path | None,
        typer.Option("--placement", help="the current placement (JSON from `placement`)"),
    ] = None,
    loads: LoadsOption = None,
    trace: TraceOption = None,
    add: Annotated[int, typer.Option(min=0, help="nodes to add")] = 0,
    remove: Annotated[
        str | None, typer.Option(help="comma-separated node indices to remove")
    ] = None,
    new_node_slots: Annotated[
        int | None, typer.Option(min=1, help="slots of each added node (default: the largest)")
    ] = None,
    target: Annotated[float, typer.Option(min=1.0, help="max/mean load to reach")] = 1.05,
    max_moves: Annotated[int | None, typer.Option(min=0, help="stop after this many moves")] = None,
    method: Annotated[
        str,
        typer.Option(
            help="greedy, milp (then the min-move MILP from the greedy's answer), search "
            "(then annealing and the LNS) or auto (milp on small clusters, search on large "
            "ones, both on mid-sized; greedy with --max-moves)"
        ),
    ] = "auto",
    time_limit: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="CPU seconds the MILP and the search may spend (wall time capped at 3x)",
        ),
    ] = 5.0,
    out: Annotated[Path | None, typer.Option(help="write the new placement as JSON")] = None,
    apply: Annotated[bool, typer.Option("--apply", help=APPLY_HELP)] = False,
) -> None:
    """Add or remove nodes and rebalance from the CURRENT placement, moving as few experts as
    reach the target; compare with a from-scratch repack."""
    from trifecta.generative.expansion import resize
    from trifecta.generative.placement import Placement, from_scratch

    if apply:  # the running service's placement (`cli.apply_placement`)
        from trifecta.generative.cli import apply_placement

        apply_placement(loads, trace, add=add, remove=remove, target=target, time_limit=time_limit)
        return
    if placement_file is None:
        raise InvalidInput("give --placement (or --apply: the service's)", field="placement")
    if not placement_file.is_file():
        raise InvalidInput(f"no such file {placement_file}", field="placement")
    current = Placement.model_validate_json(placement_file.read_text())
    load_vector = _read_loads(loads, trace, current.num_experts)
    try:
        removed = [int(n) for n in remove.split(",")] if remove else []
    except ValueError as exc:
        raise InvalidInput("node indices must be integers", field="remove") from exc
    result = resize(
        current,
        load_vector,
        add=add,
        remove=removed,
        new_node_slots=new_node_slots,
        target=target,
        max_moves=max_moves,
        method=method,
        time_limit_s=time_limit,
    )
    scratch = from_scratch(current, load_vector, result.placement.cluster, removed)
    console.print(_placement_table(result.placement, load_vector, "after rebalance"))
    console.print(
        f"max/mean load {result.before:.4f} -> {result.imbalance:.4f} with {result.moves} "
        f"expert moves (answer: {result.solver}); from-scratch repack: "
        f"{scratch.imbalance:.4f} with {scratch.moves} moves"
    )
    if out is not None:
        out.write_text(result.placement.model_dump_json(indent=2) + "\n")
        console.print(f"wrote {out}")


def register_placement_commands(app: typer.Typer) -> None:
    """Add `placement` and `expand` to the generative command group."""
    app.command("placement")(placement_command)
    app.command("expand")(expand_command)
