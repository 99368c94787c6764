"""Run a MoE layer's experts where a placement puts them: in-process by default, or as Ray
actors (one per placement node, pinned to a node of the Ray cluster) when a cluster is given.

`PlacedMoE` routes exactly as the model's `MoE` layer does (sigmoid affinities, top-k on
affinity + selection bias, gates normalised over the chosen experts), splits each expert's
tokens evenly over its replicas (the load model the placement assumes), sends every node its
batches at once, and combines the outputs. It counts the tokens each node served, which is the
measured load a new placement starts from. `apply` moves to a new placement by shipping only
the experts a node did not hold: the moves the expansion planner counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput
from trifecta.generative.placement import Placement

if TYPE_CHECKING:
    import torch

    from trifecta.generative.model import MoE

Weights = dict[str, NDArray[np.float32]]  # one expert's state dict as arrays
Batches = dict[int, NDArray[np.float32]]  # expert id -> (n, D) inputs, or outputs


class NodeExperts:
    """The expert replicas one placement node hosts (in-process, or as a Ray actor's body)."""

    def __init__(self, d_model: int, d_ff: int, weights: dict[int, Weights], threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.d_model, self.d_ff = d_model, d_ff
        self.experts: dict[int, torch.nn.Module] = {}
        for expert, state in weights.items():
            self.load(expert, state)

    def load(self, expert: int, state: Weights) -> None:
        import torch

        from trifecta.generative.model import DiffusionConfig, Expert

        module = Expert(DiffusionConfig(d_model=self.d_model, d_ff=self.d_ff))
        module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        self.experts[expert] = module.eval()

    def drop(self, expert: int) -> None:
        self.experts.pop(expert)

    def hosted(self) -> list[int]:
        return sorted(self.experts)

    def node_id(self) -> str:
        """The Ray node this actor runs on (only meaningful inside a Ray actor)."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def run(self, batches: Batches) -> Batches:
        import torch

        with torch.no_grad():
            return {
                e: self.experts[e](torch.from_numpy(np.array(x))).numpy()
                for e, x in batches.items()
            }


class NodeBackend(Protocol):
    """Where the nodes' experts run. `run` takes one batch map per node, all nodes at once."""

    def run(self, per_node: Sequence[Batches]) -> list[Batches]: ...

    def load(self, node: int, expert: int, state: Weights) -> None: ...

    def drop(self, node: int, expert: int) -> None: ...

    def hosted(self) -> list[list[int]]: ...

    def add_node(self) -> None: ...

    def remove_nodes(self, indices: Sequence[int]) -> None: ...


class LocalBackend:
    """Every node's experts in this process (the default)."""

    def __init__(self, nodes: Sequence[NodeExperts]):
        self.nodes = list(nodes)

    def run(self, per_node: Sequence[Batches]) -> list[Batches]:
        return [
            node.run(batches) if batches else {}
            for node, batches in zip(self.nodes, per_node, strict=True)
        ]

    def load(self, node: int, expert: int, state: Weights) -> None:
        self.nodes[node].load(expert, state)

    def drop(self, node: int, expert: int) -> None:
        self.nodes[node].drop(expert)

    def hosted(self) -> list[list[int]]:
        return [node.hosted() for node in self.nodes]

    def add_node(self) -> None:
        first = self.nodes[0]
        self.nodes.append(NodeExperts(first.d_model, first.d_ff, {}))

    def remove_nodes(self, indices: Sequence[int]) -> None:
        self.nodes = [node for i, node in enumerate(self.nodes) if i not in set(indices)]


class RayBackend:
    """One `NodeExperts` actor per placement node, placement node n pinned (hard affinity) to
    the n-th alive Ray node in address order, wrapping around when there are fewer."""

    def __init__(self, d_model: int, d_ff: int, weights: Sequence[dict[int, Weights]]):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = sorted(
            (n for n in ray.nodes() if n["Alive"]),
            key=lambda n: (n["NodeManagerAddress"], n["NodeID"]),
        )
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

    def run(self, per_node: Sequence[Batches]) -> list[Batches]:
        import ray

        futures = [
            actor.run.remote(batches) if batches else None
            for actor, batches in zip(self.actors, per_node, strict=True)
        ]
        return [ray.get(f) if f is not None else {} for f in futures]

    def load(self, node: int, expert: int, state: Weights) -> None:
        import ray

        ray.get(self.actors[node].load.remote(expert, state))

    def drop(self, node: int, expert: int) -> None:
        import ray

        ray.get(self.actors[node].drop.remote(expert))

    def hosted(self) -> list[list[int]]:
        import ray

        return list(ray.get([actor.hosted.remote() for actor in self.actors]))

    def add_node(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = sorted(
            (n for n in ray.nodes() if n["Alive"]),
            key=lambda n: (n["NodeManagerAddress"], n["NodeID"]),
        )
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


def expert_weights(moe: MoE) -> dict[int, Weights]:
    return {
        e: {k: v.detach().cpu().numpy().copy() for k, v in expert.state_dict().items()}
        for e, expert in enumerate(moe.experts)
    }


class PlacedMoE:
    """A MoE layer whose experts run on the nodes of a placement."""

    def __init__(self, moe: MoE, placement: Placement, ray_address: str | None = None):
        if placement.num_experts != len(moe.experts):
            raise InvalidInput(
                f"placement has {placement.num_experts} experts, the layer {len(moe.experts)}",
                field="placement",
            )
        self.moe, self.placement = moe, placement
        self.weights = expert_weights(moe)
        d_ff, d_model = self.weights[0]["gate_proj.weight"].shape
        per_node = [{e: self.weights[e] for e in experts} for experts in placement.nodes]
        self.backend: NodeBackend
        if ray_address is None:
            self.backend = LocalBackend([NodeExperts(d_model, d_ff, w) for w in per_node])
        else:
            import ray

            if not ray.is_initialized():
                ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
            self.backend = RayBackend(d_model, d_ff, per_node)
        self.node_tokens = np.zeros(placement.cluster.nodes, dtype=np.int64)

    def _holders(self) -> list[list[int]]:
        holders: list[list[int]] = [[] for _ in range(self.placement.num_experts)]
        for node, experts in enumerate(self.placement.nodes):
            for e in experts:
                holders[e].append(node)
        return holders

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D), the layer's output with every expert call made remotely."""
        import torch

        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, D)
        with torch.no_grad():
            affinity = torch.sigmoid(self.moe.router(flat))  # (N, E)
            chosen = (affinity + self.moe.selection_bias).topk(self.moe.top_k, dim=-1).indices
            gates = affinity.gather(1, chosen)
            gates = gates / gates.sum(dim=-1, keepdim=True)  # (N, K)
        holders = self._holders()
        per_node: list[Batches] = [{} for _ in self.placement.nodes]
        sent: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in per_node]
        inputs = flat.detach().numpy()
        for e in torch.unique(chosen).tolist():
            token, slot = torch.where(chosen == e)
            # An even split over the replicas: the load model the placement balanced.
            for node, part in zip(
                holders[e], np.array_split(np.arange(token.numel()), len(holders[e])), strict=True
            ):
                if part.size:
                    per_node[node][e] = inputs[token[part].numpy()]
                    sent[node][e] = (token[part], slot[part])
                    self.node_tokens[node] += part.size
        out = torch.zeros_like(flat)
        for node, results in enumerate(self.backend.run(per_node)):
            for e, y in results.items():
                token, slot = sent[node][e]
                out.index_add_(0, token, gates[token, slot, None] * torch.from_numpy(y))
        return out.reshape(shape)

    def apply(self, placement: Placement, removed: Sequence[int] = ()) -> int:
        """Move to `placement` (as `expansion.resize` lays it out: the nodes not in `removed`
        in their order, then the added ones): ship the experts each node lacks, drop those it
        no longer hosts, then retire the removed nodes. Returns the experts shipped."""
        old_count = self.placement.cluster.nodes
        kept = [n for n in range(old_count) if n not in set(removed)]
        added = placement.cluster.nodes - len(kept)
        if added < 0 or any(not 0 <= n < old_count for n in removed):
            raise InvalidInput("does not match the nodes kept and added", field="placement")
        for _ in range(added):
            self.backend.add_node()
        backend_index = kept + list(range(old_count, old_count + added))
        hosts = self.placement.hosts()
        shipped = 0
        for node, new in enumerate(placement.hosts()):
            index = backend_index[node]
            old = hosts[index] if index < old_count else set()
            for e in sorted(new - old):  # ship first: an expert is never without a replica
                self.backend.load(index, e, self.weights[e])
                shipped += 1
            for e in sorted(old - new):
                self.backend.drop(index, e)
        self.backend.remove_nodes(sorted(set(removed)))
        tokens = np.zeros(placement.cluster.nodes, dtype=np.int64)
        tokens[: len(kept)] = self.node_tokens[kept]
        self.placement, self.node_tokens = placement, tokens
        return shipped
