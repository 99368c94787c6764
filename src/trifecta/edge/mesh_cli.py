"""The body of `trifecta edge mesh`: a mesh over running or spawned nodes, shown live."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from trifecta.core.settings import get_settings
from trifecta.core.tasks import generate_tasks
from trifecta.edge.mesh import EdgeMesh
from trifecta.edge.processes import NodeProcess


def node_table(mesh: EdgeMesh) -> Table:
    table = Table(
        "node", "environment", "healthy", "in flight", "served", "model", "joins", "synced bytes"
    )
    current = mesh.current_model()
    for state in mesh.node_states():
        status = state.status
        model = status.model_sha256[:12] if status and status.model_sha256 else "-"
        if current and status and status.model_sha256 == current.sha256:
            model += " (current)"
        table.add_row(
            status.node if status else state.key,
            status.environment.name if status else "?",
            "yes" if state.healthy else "no",
            str(status.in_flight if status else 0),
            str(status.served if status else 0),
            model,
            str(state.joins),
            str(state.bytes_synced),
        )
    return table


def run_mesh(
    urls: list[str],
    spawn: int,
    model: Path,
    duration: float,
    requests: int,
    work_dir: Path,
    console: Console,
) -> None:
    spawned = [
        NodeProcess(f"node-{i}", work_dir / "nodes" / f"node-{i}").start() for i in range(spawn)
    ]
    try:
        for process in spawned:
            process.wait_ready()
        credential = get_settings().federation_credential  # the nodes' (they inherit it)
        with EdgeMesh(work_dir / "mesh", credential=credential) as mesh:
            for url in [*urls, *(p.url for p in spawned)]:
                mesh.add_node(url)
            mesh.publish_file("model", model, "edge-model")
            mesh.wait_until(lambda m: all(m.in_sync(s) for s in m.node_states()), timeout_s=60)
            served = 0
            tasks = (
                iter(generate_tasks(requests, seed=7, split="heldout", difficulties=[1, 2]))
                if requests
                else None
            )
            deadline = time.monotonic() + duration if duration else float("inf")
            with Live(node_table(mesh), console=console, refresh_per_second=4) as live:
                while time.monotonic() < deadline:
                    task = next(tasks, None) if tasks else None
                    if task is not None:
                        served += mesh.offload(None, [task.prompt]).offloaded
                    elif tasks is not None and not duration:
                        break
                    else:
                        time.sleep(0.25)
                    live.update(node_table(mesh))
            if requests:
                console.print(f"\n{served}/{requests} requests served at the edge")
    except KeyboardInterrupt:
        pass
    finally:
        for process in spawned:
            process.stop()
