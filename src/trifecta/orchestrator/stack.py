"""The whole trifecta on one machine: the embedded default, and the composition root of the loop.

`Stack` loads the capsules, the topology and the plan, then hosts the real layers in the
environments of the mock bridge:

- cognitive: the escalation cascade over the shipped tiers, in every serving environment
  that is not an edge mesh (local, inference, sovereign sites);
- context: the context service, with each domain's shard in its own database file inside
  the environment that homes the domain's capsules (a sovereign domain's playbook and
  memories live on its sovereign site);
- edge: an edge mesh per edge environment, with in-process ternary nodes synced over MCP.

Everything the orchestrator does goes through `bridge.client(capsule, environment, service)`,
so the sovereignty rule and the injected faults apply to every hop.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from trifecta.cognitive.cascade import CascadeGeneration, EscalationCascade
from trifecta.cognitive.service import auto_model, online_calibrator
from trifecta.cognitive.store import ThresholdStore
from trifecta.cognitive.tiers import TIER_NAMES
from trifecta.context.facade import ContextService
from trifecta.context.shards import ShardPlace
from trifecta.core.db import get_engine
from trifecta.core.errors import Infeasible
from trifecta.core.logging import get_logger
from trifecta.core.protocols import LanguageModel
from trifecta.core.settings import Phase, Settings, get_settings
from trifecta.edge.assets import shipped_model_path
from trifecta.edge.mesh import EdgeMesh
from trifecta.edge.node import EdgeNode, NodeConfig, NodePlace
from trifecta.federation.bridge import COGNITIVE, CONTEXT, EDGE
from trifecta.federation.mock import Fault, MockBridge
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.fleetfile import load_fleet
from trifecta.fleet.plan_model import Plan
from trifecta.fleet.planner import plan as make_plan
from trifecta.fleet.registry import CapsuleRegistry
from trifecta.fleet.topology import Environment, Topology, load_topology
from trifecta.orchestrator.ledger import CostLedger, Pricer

log = get_logger("trifecta.orchestrator")
PLACEMENT_TTL_S = 5.0


class CognitiveEndpoint:
    """The cognitive layer as one environment serves it: the `auto` cascade with the
    capsule's calibrated thresholds (recalibrated online), optionally starting on a later
    tier when a routing rule says so."""

    def __init__(self, store: ThresholdStore):
        self.online = online_calibrator(store)
        self.store = store
        self.tiers: tuple[str, ...] = TIER_NAMES

    def complete(
        self, capsule_id: str, prompt: str, *, max_new_tokens: int, start_tier: str | None = None
    ) -> CascadeGeneration:
        cascade = auto_model(capsule_id, store=self.store, online=self.online)
        if start_tier is not None:
            first = self.tiers.index(start_tier)
            cascade = EscalationCascade(
                cascade.tiers,
                cascade.thresholds,
                name=cascade.name,
                reuse_prefix=cascade.reuse_prefix,
                on_decision=cascade.on_decision,
                start=lambda prompts: [first] * len(prompts),
            )
        (generation,) = cascade.generate([prompt], max_new_tokens=max_new_tokens)
        assert isinstance(generation, CascadeGeneration)
        return generation


def serves_cognitive(env: Environment, phase: Phase) -> bool:
    return env.available_in(phase) and env.kind not in ("edge", "training")


def npu_of(env: Environment) -> str:
    return next((a for a in env.accelerators if a in ("coral-npu", "riscv-npu")), "coral-npu")


class Stack:
    def __init__(
        self,
        *,
        settings: Settings | None = None,
        capsules: Sequence[Capsule] | None = None,
        topology: Topology | None = None,
        phase: Phase | None = None,
        faults: dict[str, Fault] | None = None,
        language_model: LanguageModel | None = None,
        edge_nodes: int = 1,
        seed: int = 0,
    ):
        self.settings = settings or get_settings()
        import torch

        torch.set_num_threads(self.settings.torch_threads)
        self.engine = get_engine(self.settings.db_url)
        self.registry = CapsuleRegistry(self.engine)
        if capsules is not None:
            self.registry.add_many(capsules, replace=True)
        elif self.registry.count() == 0:
            self.registry.add_many(load_fleet(self.settings.fleet))
        self.capsules: dict[str, Capsule] = {}
        self._by_domain: dict[str, set[str]] = {}
        self._placed: dict[str, tuple[str, float]] = {}
        for capsule in self.registry.list():
            self._remember(capsule)
        self.topology = topology or load_topology(self.settings.topology)
        self.phase: Phase = phase or self.settings.phase
        self.plan: Plan = make_plan(list(self.capsules.values()), self.topology, self.phase)
        self.assignments = {a.capsule_id: a for a in self.plan.assignments}
        self.bridge = MockBridge(self.topology, faults=faults, seed=seed)
        self.context = ContextService(
            control_url=self.settings.db_url,
            registry=self.registry,
            language_model=language_model,
            redis_url=self.settings.redis_url,
        )
        self.cognitive = CognitiveEndpoint(ThresholdStore(self.engine))
        self.meshes: dict[str, EdgeMesh] = {}
        self.pricer = Pricer(self.topology, self.phase, self.plan)
        self.ledger = CostLedger(self.engine)
        for env in self.topology.environments:
            if serves_cognitive(env, self.phase):
                self.bridge.host(env.name, COGNITIVE, self.cognitive)
                self.bridge.host(env.name, CONTEXT, self.context)
        self._place_shards()
        self._start_edge(edge_nodes)

    # -- context shards ----------------------------------------------------------------
    def shard_url(self, environment: str) -> str:
        path = self.settings.data_dir / "environments" / environment / "context.db"
        return f"sqlite:///{path}"

    def _place_shards(self) -> None:
        """Give each domain a shard in the environment that homes most of its capsules."""
        homes: dict[str, Counter[str]] = {}
        for item in self.plan.assignments:
            homes.setdefault(item.domain, Counter())[item.environment] += 1
        for domain, counts in sorted(homes.items()):
            self.place_domain(domain, [env for env, _ in counts.most_common()])

    def place_domain(self, domain: str, preferred: Sequence[str] = ()) -> str:
        """The environment of `domain`'s context shard, placing it on first use in the first
        environment that hosts context and that every capsule of the domain may reach.
        A shard already placed where one of its capsules may not go is refused. Answers are
        remembered for a few seconds (a shard move elsewhere shows up after that)."""
        known = self._placed.get(domain)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        env = self._place_domain(domain, preferred)
        self._placed[domain] = (env, time.monotonic() + PLACEMENT_TTL_S)
        return env

    def _place_domain(self, domain: str, preferred: Sequence[str]) -> str:
        members = self.members(domain)
        placed = self.context.shard_map.get(domain)
        if placed is None or placed[1] is None:
            hosts = [e.name for e in self.bridge.environments_hosting(CONTEXT)]
            for name in [*preferred, *hosts]:
                env = self.topology.environment(name)
                if name in hosts and all(c.allows(env) for c in members):
                    place = ShardPlace(name=env.name, kind=env.kind, jurisdiction=env.jurisdiction)
                    self.context.shard_map.assign(domain, self.shard_url(env.name), place)
                    return env.name
            raise Infeasible(
                f"no environment hosting context is allowed for every capsule of domain {domain!r}",
                field="domain",
            )
        place = placed[1]
        for capsule in members:
            if not capsule.allows(place):
                raise Infeasible(
                    f"domain {domain!r} has its context shard in {place.name!r}, which capsule "
                    f"{capsule.id!r} may not reach; move it with `trifecta context shard move`",
                    field="domain",
                )
        return place.name

    # -- edge meshes -------------------------------------------------------------------
    def _start_edge(self, nodes_per_environment: int) -> None:
        model = shipped_model_path()
        for env in self.topology.environments:
            if env.kind != "edge" or not env.available_in(self.phase) or nodes_per_environment < 1:
                continue
            root = self.settings.data_dir / "edge" / env.name
            mesh = EdgeMesh(root / "mesh", heartbeat_s=0.5).start()
            mesh.publish_file("model", model, name="edge-model")
            for i in range(nodes_per_environment):
                mesh.add_node(
                    EdgeNode(
                        NodeConfig(
                            name=f"{env.name}-node-{i}",
                            environment=NodePlace(
                                name=env.name, kind=env.kind, jurisdiction=env.jurisdiction
                            ),
                            data_dir=Path(root / f"node-{i}"),
                            accelerator=npu_of(env),
                        )
                    )
                )
            self.meshes[env.name] = mesh
            self.bridge.host(env.name, EDGE, mesh)
        for name, mesh in self.meshes.items():
            if not mesh.wait_until(lambda m: all(m.in_sync(s) for s in m.node_states()), 60):
                log.warning("edge nodes not in sync yet", environment=name)

    def warm_up(self) -> None:
        """Load the tiers and compile the edge kernels before serving, so that the first
        requests do not pay for it (and latency figures measure serving, not start-up)."""
        self.cognitive.complete("warm-up", "1+1?", max_new_tokens=2)
        for mesh in self.meshes.values():
            mesh.offload(None, ["a=1,b=2;a?"], max_new_tokens=2)
        self.context.embed(["warm up"])

    # -- lifecycle ---------------------------------------------------------------------
    def capsule(self, capsule_id: str) -> Capsule:
        found = self.capsules.get(capsule_id)
        if found is None:
            found = self.registry.get(capsule_id)
            self._remember(found)
        return found

    def add_capsule(self, capsule: Capsule) -> Capsule:
        """Register a capsule (refused if its domain mixes tenancies) and serve it at once."""
        self.registry.add(capsule)
        self._remember(capsule)
        return capsule

    def remove_capsule(self, capsule_id: str) -> None:
        self.registry.remove(capsule_id)
        gone = self.capsules.pop(capsule_id, None)
        if gone is not None:
            self._by_domain[gone.domain].discard(gone.id)

    def members(self, domain: str) -> list[Capsule]:
        return [self.capsules[i] for i in sorted(self._by_domain.get(domain, ()))]

    def _remember(self, capsule: Capsule) -> None:
        self.capsules[capsule.id] = capsule
        self._by_domain.setdefault(capsule.domain, set()).add(capsule.id)
        self._placed.pop(capsule.domain, None)

    def close(self) -> None:
        for mesh in self.meshes.values():
            mesh.stop()
        self.meshes.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
