"""The composition root of the loop: builds the parts and hands the orchestrator the few it needs.

On the embedded default (`Stack(...)`), every environment of the topology is hosted in this
process behind the in-process bridge:

- cognitive: the serving layer's escalation cascade (fair queuing, continuous batching, the
  tiers loaded once) in every serving environment that is not an edge mesh;
- context: the context service, each domain's shard a database file inside the environment
  that homes the domain's capsules (a sovereign domain's context lives on its sovereign site);
- edge: an edge mesh per edge environment, with in-process ternary nodes synced over MCP.

A federated front door (`Stack(remote=...)`) hosts nothing itself: its bridge reaches each
environment's server (`trifecta env serve`) over HTTP. Either way the bridge is wrapped by the
mock bridge, so faults can be injected into every hop.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from pathlib import Path

from trifecta.cognitive.serving.auto import AutoModel
from trifecta.cognitive.serving.quota import QuotaGate
from trifecta.cognitive.serving.service import CognitiveService
from trifecta.cognitive.store import ThresholdStore
from trifecta.cognitive.tiers import TIER_NAMES
from trifecta.context.facade import ContextService
from trifecta.context.learn_worker import LearnWorker
from trifecta.context.shards import ShardMap
from trifecta.core.db import get_engine
from trifecta.core.logging import get_logger
from trifecta.core.protocols import LanguageModel
from trifecta.core.settings import Phase, Settings, get_settings
from trifecta.edge.assets import shipped_model_path
from trifecta.edge.mesh import EdgeMesh
from trifecta.edge.node import EdgeNode, NodeConfig, NodePlace
from trifecta.federation.bridge import Bridge, InProcessBridge
from trifecta.federation.mock import Fault, MockBridge
from trifecta.federation.receiver import EnvironmentHost, EnvironmentServices
from trifecta.federation.rules import RuleBook, artifact_source
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.fleetfile import load_fleet
from trifecta.fleet.plan_model import Plan
from trifecta.fleet.planner import plan as make_plan
from trifecta.fleet.registry import CapsuleRegistry
from trifecta.fleet.topology import Environment, Topology, load_topology
from trifecta.generative.service import GenerativeService
from trifecta.generative.store import GenerativeStore
from trifecta.orchestrator.ledger import CostLedger, Pricer
from trifecta.orchestrator.parts import CapsuleDirectory, LoopParts, ShardPlacement
from trifecta.tensorlogic.assets import program_path, shipped_programs

log = get_logger("trifecta.orchestrator")


def serves_cognitive(env: Environment, phase: Phase) -> bool:
    return env.available_in(phase) and env.kind not in ("edge", "training")


def npu_of(env: Environment) -> str:
    return next((a for a in env.accelerators if a in ("coral-npu", "riscv-npu")), "coral-npu")


def shard_url(settings: Settings, environment: str) -> str:
    """Where an environment keeps the context shards of the domains it homes (the settings'
    `shard_urls`, else a file in the data directory: the places a shard may move to)."""
    return settings.shard_url(environment)


def start_edge_mesh(
    env: Environment, settings: Settings, nodes: int, *, wait_s: float = 60
) -> EdgeMesh:
    """An edge site's mesh with `nodes` in-process ternary nodes, the shipped model and the
    shipped Tensor Logic programs synced to them as artifacts."""
    root = settings.data_dir / "edge" / env.name
    mesh = EdgeMesh(root / "mesh", heartbeat_s=0.5).start()
    mesh.publish_file("model", shipped_model_path(), name="edge-model")
    for name in shipped_programs():
        mesh.publish_file("tensorlogic", program_path(name), name=name)
    place = NodePlace(name=env.name, kind=env.kind, jurisdiction=env.jurisdiction)
    for i in range(nodes):
        mesh.add_node(
            EdgeNode(
                NodeConfig(
                    name=f"{env.name}-node-{i}",
                    environment=place,
                    data_dir=Path(root / f"node-{i}"),
                    accelerator=npu_of(env),
                )
            )
        )
    if not mesh.wait_until(lambda m: all(m.in_sync(s) for s in m.node_states()), wait_s):
        log.warning("edge nodes not in sync yet", environment=env.name)
    return mesh


def edge_rule_book(mesh: EdgeMesh) -> RuleBook:
    """Rule queries at an edge site, on the programs its mesh holds as synced artifacts."""

    def read(name: str) -> bytes | None:
        ref = mesh.store.current("tensorlogic", name)
        return mesh.store.read(ref.sha256) if ref is not None else None

    return RuleBook(artifact_source(read))


def warm_up(
    *,
    auto: AutoModel | None,
    meshes: Iterable[EdgeMesh],
    context: ContextService | None,
    cloud_rules: RuleBook | None,
    programs: Iterable[str],
) -> None:
    """Load the tiers, compile the edge kernels, load the embedder and fit the programs'
    learnable tensors before serving, so that the first requests do not pay for it (and
    latency figures measure serving, not start-up)."""
    import threading

    from trifecta.cognitive.backends.base import SamplingOptions
    from trifecta.cognitive.serving.tenants import ANONYMOUS

    if auto is not None:
        auto.generate(
            ANONYMOUS, ["1+1?"], SamplingOptions(max_new_tokens=2), cancelled=threading.Event()
        )
    for mesh in meshes:
        mesh.offload(None, ["a=1,b=2;a?"], max_new_tokens=2)
    if context is not None:
        context.embed(["warm up"])
    if cloud_rules is not None:  # embedding mode fits the learnable tensors once
        for program in sorted(set(programs)):
            cloud_rules.service(program).embedding()
    if context is not None and isinstance(context.learner, LearnWorker):
        _ = context.learner.embedder  # the learning thread's own encoder, else loaded mid-run
    # What is loaded by now (modules, models, tables: about 700,000 objects) lives as long as
    # the process: out of the cyclic collector's way. Each full collection scanned it all,
    # 0.4 s with every thread stopped, about once in 600 requests of `trifecta run`.
    gc.collect()
    gc.freeze()


def build_generative(settings: Settings) -> GenerativeService:
    """The generative layer (the shipped MoE diffusion model, loaded once per process), its
    per-capsule masks and router biases kept in the control database."""
    return GenerativeService(store=GenerativeStore(get_engine(settings.db_url)))


def build_cognitive(settings: Settings, phase: Phase, replicas: int = 1) -> CognitiveService:
    """The cognitive serving layer, the tiers loaded once for every caller in this process."""
    from trifecta.cognitive.serving.factory import build_service

    return build_service(
        phase=phase,
        replicas=replicas,
        torch_threads=settings.torch_threads,
        threshold_store=ThresholdStore(get_engine(settings.db_url)),
    )


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
        cognitive: CognitiveService | None = None,
        remote: Bridge | None = None,
    ):
        self.settings = settings or get_settings()
        self.engine = get_engine(self.settings.db_url)
        registry = CapsuleRegistry(self.engine)
        if capsules is not None:
            registry.add_many(capsules, replace=True)
        else:  # the configured fleet, beside any capsule registered by hand
            registry.add_missing(load_fleet(self.settings.fleet))
        self.capsules = CapsuleDirectory(registry)
        self.topology = topology or load_topology(self.settings.topology)
        self.phase: Phase = phase or self.settings.phase
        self.plan: Plan = make_plan(self.capsules.all(), self.topology, self.phase)
        self.meshes: dict[str, EdgeMesh] = {}
        self.context: ContextService | None = None
        self.generative: GenerativeService | None = None
        self.rules: RuleBook | None = None
        self.cognitive: CognitiveService | None = cognitive
        self._owns_cognitive = True  # a service handed in is ours to close with the stack
        self.federated = remote is not None
        if remote is None:
            inner: Bridge = self._host_locally(language_model, edge_nodes)
        else:
            inner = remote
        self.bridge = MockBridge(inner, faults=faults, seed=seed)
        self.shards = ShardPlacement(
            ShardMap(self.settings.db_url),
            self.capsules,
            self.bridge,
            {env.name: shard_url(self.settings, env.name) for env in self.topology.environments},
        )
        self.shards.place_all(self.plan)
        self.parts = LoopParts(
            capsules=self.capsules,
            bridge=self.bridge,
            shards=self.shards,
            plan=self.plan,
            pricer=Pricer(self.topology, self.phase, self.plan),
            ledger=CostLedger(self.engine),
            engine=self.engine,
            # One quota gate: the serving layer's, shared by the OpenAI API and the loop.
            quota=self.cognitive.quotas if self.cognitive is not None else QuotaGate(),
            tiers=tuple(TIER_NAMES),
        )

    def _host_locally(self, language_model: LanguageModel | None, edge_nodes: int) -> Bridge:
        self.context = ContextService(
            control_url=self.settings.db_url,
            registry=self.capsules.registry,
            language_model=language_model,
            redis_url=self.settings.redis_url,
        )
        if self.cognitive is None:
            self.cognitive = build_cognitive(self.settings, self.phase)
        self.generative = build_generative(self.settings)
        self.rules = RuleBook()  # the cloud's: shared by the serving environments here
        hosts: dict[str, EnvironmentHost] = {}
        for env in self.topology.environments:
            services = EnvironmentServices()
            if serves_cognitive(env, self.phase):
                services.cognitive = self.cognitive.auto
                services.context = self.context
                services.generative = self.generative
                services.rules = self.rules
            elif env.kind == "edge" and env.available_in(self.phase) and edge_nodes >= 1:
                services.edge = self.meshes[env.name] = start_edge_mesh(
                    env, self.settings, edge_nodes
                )
                services.rules = edge_rule_book(services.edge)
            if services.names():
                hosts[env.name] = EnvironmentHost(env, services, self.capsules.get)
        return InProcessBridge(self.topology, hosts)

    # -- conveniences for the CLI and the tests -----------------------------------------
    def capsule(self, capsule_id: str) -> Capsule:
        return self.capsules.get(capsule_id)

    def place_domain(self, domain: str) -> str:
        return self.shards.place(domain)

    def add_capsule(self, capsule: Capsule) -> Capsule:
        added = self.capsules.add(capsule)
        self.shards.forget(capsule.domain)
        return added

    def remove_capsule(self, capsule_id: str) -> None:
        self.capsules.remove(capsule_id)

    def warm_up(self) -> None:
        warm_up(
            auto=self.cognitive.auto if self.cognitive is not None else None,
            meshes=self.meshes.values(),
            context=self.context,
            cloud_rules=self.rules,
            programs=[c.program for c in self.capsules.all() if c.program],
        )

    def close(self) -> None:
        self.capsules.close()
        self.bridge.close()
        if self.context is not None:
            self.context.close()  # what is still queued stays queued for the next start
        for mesh in self.meshes.values():
            mesh.stop()
        self.meshes.clear()
        if self.cognitive is not None and self._owns_cognitive:
            self.cognitive.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
