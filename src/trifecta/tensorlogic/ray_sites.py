"""Federated sites as Ray actors: one actor per data partition, pinned to the node that holds
the partition by a custom resource that only that node offers (`ray start --resources
'{"tl-site-a": 1}'`), so a sovereign partition's facts are read on its node and never leave it.

The server's loop, the messages (`FitIns` / `FitRes` / `EvaluateRes`) and the strategy are
`federated`'s: an actor is one more `SiteLink`. What the server sends an actor: the program's
text (rules and declarations, no site data), the partition's facts directory as a path on the
actor's node, and the global parameters each round; what comes back: parameter arrays, example
counts and losses.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from trifecta.core.errors import InvalidInput, Unavailable
from trifecta.tensorlogic.federated import EvaluateIns, Federation, FitIns, SiteReply
from trifecta.tensorlogic.program import Program, compile_program

RESOURCE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"


class RayPartition(BaseModel):
    """A partition on a Ray cluster: the custom resource naming its node, and its facts
    directory as a path on that node."""

    resource: str = Field(pattern=RESOURCE_PATTERN, description="e.g. tl-site-a")
    facts_dir: Path

    @classmethod
    def parse(cls, text: str) -> RayPartition:
        """`RESOURCE=DIR`, the command line's form."""
        resource, sep, facts_dir = text.partition("=")
        if not sep or not facts_dir:
            raise InvalidInput(f"a Ray partition is RESOURCE=DIR, not {text!r}", field="partition")
        try:
            return cls(resource=resource, facts_dir=Path(facts_dir))
        except ValidationError:
            raise InvalidInput(
                f"{resource!r} is not a Ray resource name (letters, digits, _ . -)",
                field="partition",
            ) from None


class SiteReport(BaseModel):
    """Where an actor runs and what partition data it holds in memory (a digest per tensor of
    its facts and examples: enough to tell partitions apart, without sending them)."""

    resource: str
    node_id: str
    node_ip: str
    facts: dict[str, str]
    examples: dict[str, str]
    counts: dict[str, int]


def data_digests(program: Program, store: str) -> tuple[dict[str, str], dict[str, int]]:
    digests, counts = {}, {}
    for name in sorted(getattr(program, store)):
        coords, values = (
            program.fact_arrays(name) if store == "facts" else program.example_arrays(name)
        )
        digest = hashlib.blake2b(coords.tobytes() + values.tobytes(), digest_size=16)
        digests[name], counts[f"{store}:{name}"] = digest.hexdigest(), len(values)
    return digests, counts


class PartitionSite:
    """The actor's body (wrapped by `ray.remote` when a federation starts): loads its
    partition once on its node, then answers the server's messages."""

    def __init__(self, program_text: str, source: str, resource: str, facts_dir: str):
        import torch

        torch.set_num_threads(1)
        self.resource = resource
        self.program = compile_program(program_text, source=source, base_dir=Path(facts_dir))

    def handle(self, message: FitIns | EvaluateIns) -> SiteReply:
        from trifecta.tensorlogic.federated import answer

        return answer(self.program, message)

    def report(self) -> dict[str, object]:
        import ray

        context = ray.get_runtime_context()
        facts, fact_counts = data_digests(self.program, "facts")
        examples, example_counts = data_digests(self.program, "examples")
        return SiteReport(
            resource=self.resource,
            node_id=str(context.get_node_id()),
            node_ip=str(ray.util.get_node_ip_address()),
            facts=facts,
            examples=examples,
            counts={**fact_counts, **example_counts},
        ).model_dump()


class RaySite:
    """The server's end of one actor: `send` starts the call, `receive` waits for it."""

    def __init__(self, actor: Any, resource: str):
        self.actor = actor  # a Ray actor handle (untyped: Ray's handles are dynamic)
        self.resource = resource
        self._pending: Any = None

    def send(self, message: FitIns | EvaluateIns) -> None:
        self._pending = self.actor.handle.remote(message)

    def receive(self) -> SiteReply:
        import ray

        ref, self._pending = self._pending, None
        reply: SiteReply = ray.get(ref)
        return reply

    def report(self) -> SiteReport:
        import ray

        return SiteReport.model_validate(ray.get(self.actor.report.remote()))

    def close(self) -> None:
        import ray

        ray.kill(self.actor)


def _check_reachable(address: str | None) -> None:
    """A `host:port` that nothing answers is one clear error, not a minute of Ray's own
    retries and log lines before it gives up."""
    if address is None or "://" in address or ":" not in address:
        return  # "auto", a ray:// client address, or a local cluster: Ray resolves those
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except (OSError, ValueError) as exc:
        raise Unavailable(
            f"no Ray cluster answers at {address!r} ({exc})", field="ray_address"
        ) from None


def ray_federation(
    program_path: Path, partitions: list[RayPartition], *, address: str | None = None
) -> Federation:
    """A `Federation` whose sites are Ray actors, each pinned to its partition's node.
    Connects to the cluster at `address` unless this process already did."""
    import ray

    if not partitions:
        raise InvalidInput("at least one partition is needed", field="partitions")
    if len({p.resource for p in partitions}) != len(partitions):
        raise InvalidInput("each partition needs its own node resource", field="partition")
    if not ray.is_initialized():
        _check_reachable(address)
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    offered = ray.cluster_resources()
    for partition in partitions:
        # an actor asking for a resource no node offers would wait forever
        if offered.get(partition.resource, 0) < 1:
            raise Unavailable(
                f"no Ray node offers the resource {partition.resource!r} "
                f"(start the partition's node with --resources '{{\"{partition.resource}\": 1}}')"
            )
    text = program_path.read_text()
    actor_class = ray.remote(num_cpus=0)(PartitionSite)
    sites = [
        RaySite(
            actor_class.options(resources={p.resource: 1}).remote(
                text, program_path.name, p.resource, str(p.facts_dir)
            ),
            p.resource,
        )
        for p in partitions
    ]
    return Federation(program_path, [p.facts_dir for p in partitions], sites=sites)
