"""Where a placement's nodes run their experts: the replicas one node hosts (`NodeExperts`),
and the backends that run every node's batches at once, in this process (`LocalBackend`, the
default) or as one Ray actor per node pinned to a node of a Ray cluster (`RayBackend`).
`ray_experts.PlacedMoE` decides what each node holds and is sent; this module only holds and
runs it.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput, Unavailable

if TYPE_CHECKING:
    import torch

Weights = dict[str, NDArray[np.float32]]  # one expert's state dict as arrays
Batches = dict[int, NDArray[np.float32]]  # expert id -> (n, D) inputs, or outputs
Variants = dict[int, str]  # expert id -> the merged variant to run (absent: the expert itself)


class NodeExperts:
    """The expert replicas one placement node hosts (in-process, or as a Ray actor's body)."""

    def __init__(self, d_model: int, d_ff: int, weights: dict[int, Weights], threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.d_model, self.d_ff = d_model, d_ff
        self.experts: dict[int, torch.nn.Module] = {}
        self.variants: dict[tuple[int, str], torch.nn.Module] = {}  # merged experts
        for expert, state in weights.items():
            self.load(expert, state)

    def _module(self, state: Weights) -> torch.nn.Module:
        import torch

        from trifecta.generative.model import DiffusionConfig, Expert

        module = Expert(DiffusionConfig(d_model=self.d_model, d_ff=self.d_ff))
        module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        return module.eval()

    def load(self, expert: int, state: Weights) -> None:
        self.experts[expert] = self._module(state)

    def load_variant(self, expert: int, tag: str, state: Weights) -> None:
        """A merged version of a hosted expert (a mask's merge plan), run in its place when a
        batch names `tag` for it."""
        if expert not in self.experts:
            raise InvalidInput(f"expert {expert} is not hosted on this node", field="experts")
        self.variants[(expert, tag)] = self._module(state)

    def drop_variant(self, expert: int, tag: str) -> None:
        self.variants.pop((expert, tag), None)

    def drop(self, expert: int) -> None:
        self.experts.pop(expert)
        for key in [k for k in self.variants if k[0] == expert]:
            del self.variants[key]

    def hosted(self) -> list[int]:
        return sorted(self.experts)

    def hosted_variants(self) -> list[tuple[int, str]]:
        return sorted(self.variants)

    def node_id(self) -> str:
        """The Ray node this actor runs on (only meaningful inside a Ray actor)."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def run(self, batches: Batches, variants: Variants | None = None) -> Batches:
        import torch

        variants = variants or {}
        with torch.no_grad():
            return {
                e: self._runner(e, variants.get(e))(torch.from_numpy(np.array(x))).numpy()
                for e, x in batches.items()
            }

    def _runner(self, expert: int, tag: str | None) -> torch.nn.Module:
        return self.experts[expert] if tag is None else self.variants[(expert, tag)]


class NodeBackend(Protocol):
    """Where the nodes' experts run. `run` takes one batch map per node, all nodes at once,
    and per node the merged variants its batches use."""

    def run(self, per_node: Sequence[Batches], variants: Sequence[Variants]) -> list[Batches]: ...

    def load(self, node: int, expert: int, state: Weights) -> None: ...

    def load_variant(self, node: int, expert: int, tag: str, state: Weights) -> None: ...

    def drop_variant(self, node: int, expert: int, tag: str) -> None: ...

    def drop(self, node: int, expert: int) -> None: ...

    def hosted(self) -> list[list[int]]: ...

    def hosted_variants(self) -> list[list[tuple[int, str]]]: ...

    def add_node(self) -> None: ...

    def remove_nodes(self, indices: Sequence[int]) -> None: ...


class LocalBackend:
    """Every node's experts in this process (the default)."""

    def __init__(self, nodes: Sequence[NodeExperts]):
        self.nodes = list(nodes)

    def run(self, per_node: Sequence[Batches], variants: Sequence[Variants]) -> list[Batches]:
        return [
            node.run(batches, tags) if batches else {}
            for node, batches, tags in zip(self.nodes, per_node, variants, strict=True)
        ]

    def load(self, node: int, expert: int, state: Weights) -> None:
        self.nodes[node].load(expert, state)

    def load_variant(self, node: int, expert: int, tag: str, state: Weights) -> None:
        self.nodes[node].load_variant(expert, tag, state)

    def drop_variant(self, node: int, expert: int, tag: str) -> None:
        self.nodes[node].drop_variant(expert, tag)

    def drop(self, node: int, expert: int) -> None:
        self.nodes[node].drop(expert)

    def hosted(self) -> list[list[int]]:
        return [node.hosted() for node in self.nodes]

    def hosted_variants(self) -> list[list[tuple[int, str]]]:
        return [node.hosted_variants() for node in self.nodes]

    def add_node(self) -> None:
        first = self.nodes[0]
        self.nodes.append(NodeExperts(first.d_model, first.d_ff, {}))

    def remove_nodes(self, indices: Sequence[int]) -> None:
        self.nodes = [node for i, node in enumerate(self.nodes) if i not in set(indices)]


def _alive_in_order() -> list[dict[str, Any]]:
    """The Ray cluster's alive nodes in address order (placement node n goes to the n-th)."""
    import ray

    return sorted(
        (n for n in ray.nodes() if n["Alive"]),
        key=lambda n: (n["NodeManagerAddress"], n["NodeID"]),
    )


class RayBackend:
    """One `NodeExperts` actor per placement node, placement node n pinned (hard affinity) to
    the n-th alive Ray node in address order, wrapping around when there are fewer."""

    def __init__(self, d_model: int, d_ff: int, weights: Sequence[dict[int, Weights]]):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = _alive_in_order()
        if not alive:
            raise InvalidInput("the Ray cluster has no alive node", field="ray_address")
        self.d_model, self.d_ff = d_model, d_ff
        self.actor = ray.remote(num_cpus=0)(NodeExperts)
        self.ray_nodes = [alive[n % len(alive)]["NodeID"] for n in range(len(weights))]
        self.actors: list[Any] = [  # Ray actor handles (untyped by Ray)
            self.actor.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
            ).remote(d_model, d_ff, node_weights)
            for node_id, node_weights in zip(self.ray_nodes, weights, strict=True)
        ]

    def run(self, per_node: Sequence[Batches], variants: Sequence[Variants]) -> list[Batches]:
        import ray

        futures = [
            actor.run.remote(batches, tags) if batches else None
            for actor, batches, tags in zip(self.actors, per_node, variants, strict=True)
        ]
        return [ray.get(f) if f is not None else {} for f in futures]

    def load(self, node: int, expert: int, state: Weights) -> None:
        import ray

        ray.get(self.actors[node].load.remote(expert, state))

    def load_variant(self, node: int, expert: int, tag: str, state: Weights) -> None:
        import ray

        ray.get(self.actors[node].load_variant.remote(expert, tag, state))

    def drop_variant(self, node: int, expert: int, tag: str) -> None:
        import ray

        ray.get(self.actors[node].drop_variant.remote(expert, tag))

    def drop(self, node: int, expert: int) -> None:
        import ray

        ray.get(self.actors[node].drop.remote(expert))

    def hosted(self) -> list[list[int]]:
        import ray

        return list(ray.get([actor.hosted.remote() for actor in self.actors]))

    def hosted_variants(self) -> list[list[tuple[int, str]]]:
        import ray

        hosted = ray.get([actor.hosted_variants.remote() for actor in self.actors])
        return [[(int(e), str(tag)) for e, tag in node] for node in hosted]

    def add_node(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = _alive_in_order()
        node_id = alive[len(self.actors) % len(alive)]["NodeID"]
        self.ray_nodes.append(node_id)
        strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
        self.actors.append(
            self.actor.options(scheduling_strategy=strategy).remote(self.d_model, self.d_ff, {})
        )

    def remove_nodes(self, indices: Sequence[int]) -> None:
        import ray

        for i in indices:
            ray.kill(self.actors[i])
        self.actors = [a for i, a in enumerate(self.actors) if i not in set(indices)]
        self.ray_nodes = [n for i, n in enumerate(self.ray_nodes) if i not in set(indices)]

    def actor_nodes(self) -> list[str]:
        """The Ray node each actor reports it runs on."""
        import ray

        return list(ray.get([actor.node_id.remote() for actor in self.actors]))


def connect_ray(address: str) -> None:
    """Join the Ray cluster at `address` (once per process); one clear error if none answers
    (Ray itself retries a `host:port` that nothing answers for minutes)."""
    import ray

    if ray.is_initialized():
        return
    host, colon, port = address.rpartition(":")
    if colon and port.isdigit() and "://" not in address:  # not "auto" nor a ray:// client
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
        except OSError as exc:
            raise _unanswered(address, exc) from None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise _unanswered(address, exc) from None


def _unanswered(address: str, exc: Exception) -> Unavailable:
    return Unavailable(f"no Ray cluster answers at {address!r} ({exc})", field="ray_address")


def alive_ray_nodes(address: str) -> int:
    import ray

    connect_ray(address)
    return sum(1 for n in ray.nodes() if n["Alive"])
