"""The trifecta loop: one capsule request, end to end (docs/architecture.md, "The request path").

capsule checks (quota) -> context retrieval from the domain's shard -> route (response cache |
edge | cognitive, steered by the playbook's routing rules) -> layer, with fallback inside the
capsule's allowed environments -> outcome (the task verifier, or the client's feedback later)
-> learning (reflect, curate and distil through the context layer; routing rules from
outcomes) -> request log, cost ledger and metrics.

Every hop is a typed client from the bridge (`federation.services`), in-process or over HTTP.
The loop only ever picks environments that admit the capsule (`Environment.admits`: the one
placement rule), the bridge refuses any other, and the receiving environment checks again, so
no route, fallback included, can carry a capsule's request or context elsewhere.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextvars import copy_context

from trifecta.cognitive.tiers import get_tier
from trifecta.context.deltas import Delta
from trifecta.context.models import PlaybookView, Retrieval
from trifecta.context.store import versions_pinned
from trifecta.core.errors import Conflict, SovereigntyViolation, Unavailable
from trifecta.core.ids import unique_id
from trifecta.core.logging import get_logger
from trifecta.core.tasks import Task, TaskFamilyVerifier
from trifecta.federation.bridge import placeable
from trifecta.federation.rules import RuleVerifier, is_rule_query, render
from trifecta.federation.services import (
    COGNITIVE,
    EDGE,
    GENERATIVE,
    RULES,
    CompleteRequest,
    CompleteResponse,
    OffloadRequest,
    RuleRequest,
)
from trifecta.fleet.capsules import Capsule
from trifecta.generative.service import GenerativeRequest
from trifecta.orchestrator.context_hop import ContextHop
from trifecta.orchestrator.generative_outcomes import GenerativeOutcomes
from trifecta.orchestrator.metrics import LoopMetrics
from trifecta.orchestrator.models import (
    Feedback,
    FeedbackResult,
    Hop,
    Route,
    TaskRequest,
    TaskResult,
)
from trifecta.orchestrator.parts import LoopParts
from trifecta.orchestrator.records import RequestLog
from trifecta.orchestrator.routing import GenerativeRouteRule, RouteAdvice, RuleLearner, advise
from trifecta.orchestrator.trace import (
    GENERATIVE_MAX_PROMPT,
    Served,
    Trace,
    context_use_of,
    cost_of,
    mean_of,
    ranked,
    task_of,
    to_generative,
    trajectory_of,
)

log = get_logger("trifecta.orchestrator")
EDGE_MODEL = "bitnet-2b4t"  # the checkpoint the shipped edge model stands for (for charges)
GENERATIVE_MODEL = "rnd1-30b-a3b"  # what the shipped MoE diffusion model stands for


def new_request_id() -> str:
    """A request's id when the client sent none (no system call: `core.ids`)."""
    return unique_id("req-")


class Orchestrator:
    def __init__(self, parts: LoopParts, *, run_id: str | None = None, learn: bool = True):
        self.parts = parts
        self.bridge = parts.bridge
        self.records = RequestLog(parts.engine, parts.ledger)
        self.verifier = TaskFamilyVerifier()
        self.rule_verifier = RuleVerifier()
        self.rules = RuleLearner(parts.tiers)
        self.metrics = LoopMetrics()
        self.run_id = run_id
        self.learn_enabled = learn
        self.generative_outcomes = GenerativeOutcomes()
        self.generative_routes = GenerativeRouteRule()
        self.context_hop = ContextHop(parts.bridge, parts.pricer, self.metrics)
        # A routing rule is stored off the request path: writing a bullet (its embedding, the
        # shard's write lock) took 22-35 ms of CPU and 0.1-1.4 s of wall time (load ~7), which
        # the request that completed the evidence waited out. One thread: rules land in order.
        self._rule_writes = ThreadPoolExecutor(1, thread_name_prefix="rules")
        self._pending_rules: list[Future[None]] = []
        self._pending_lock = threading.Lock()

    # -- the request path --------------------------------------------------------------
    def serve(self, capsule_id: str, request: TaskRequest) -> TaskResult:
        started = time.perf_counter()
        capsule = self.parts.capsules.get(capsule_id)
        with self.parts.capsules.pinned(capsule), versions_pinned(), self.context_hop.serving():
            # every hop admits the capsule as read now, and reads the domain's context at
            # the version the request first read (one version read a request)
            return self._serve(capsule, request, started)

    def _serve(self, capsule: Capsule, request: TaskRequest, started: float) -> TaskResult:
        capsule_id = capsule.id
        if request.request_id is not None:
            earlier = self.records.find(request.request_id)
            if earlier is not None:
                if earlier.capsule_id != capsule_id:
                    raise Conflict("request_id is taken by another capsule", field="request_id")
                return earlier
        self.parts.quota.admit(capsule.id, capsule.quota_rps)
        request_id = request.request_id or new_request_id()
        task = task_of(request.prompt, capsule.domain)
        trace = Trace()
        context_env = self.parts.shards.place(capsule.domain)
        playbook = self.context_hop.playbook(capsule, context_env, trace)
        advice = advise(
            task.kind if task else None,
            ranked(playbook.bullets) if playbook else [],
            self.parts.tiers,
        )
        served = self._cached(capsule, request, context_env, trace)
        program = capsule.program if is_rule_query(request.prompt) else None
        if served is None and program is not None:
            served = self._rules(capsule, program, request, trace)
        if served is None and advice.edge and task is not None and task.light:
            served = self._edge(capsule, request, trace)
        # The routes above read no context: the edge model, the rules, the response cache.
        # The generative and cognitive layers may, so their request retrieves the query's
        # bullets and memories, on another thread while the layer decodes.
        found: Future[tuple[Retrieval | None, Trace]] | None = None
        if served is None and playbook is not None:
            found = self.context_hop.start_retrieval(capsule, context_env, request.prompt)
        try:
            if served is None and task is not None and self._gen_route(capsule, request_id, task):
                served = self._generative(capsule, request, trace)
            if served is None:
                served = self._cognitive(capsule, request, advice, trace)
        finally:
            retrieval, retrieved = found.result() if found is not None else (None, Trace())
        trace.hops[1:1] = retrieved.hops  # after the playbook's hop, in the order they began
        trace.charges.extend(retrieved.charges)
        verified = (
            self._verify_rule(program, request.prompt, served.answer or "")
            if program is not None
            else self.verifier.verify(request.prompt, served.answer or "")
            if task
            else None
        )
        if task is not None and verified is not None:
            self.generative_routes.observe(capsule.id, task.difficulty, served.route, verified)
        if served.generative is not None:
            self._tune_generative(capsule, request_id, served)
        latency_ms = (time.perf_counter() - started) * 1000
        result = TaskResult(
            id=request_id,
            capsule_id=capsule.id,
            prompt=request.prompt,
            answer=served.answer,
            route=served.route,
            path=served.path,
            environment=served.environment,
            verified=verified,
            escalated=served.escalated,
            hops=trace.hops,
            context=context_use_of(context_env, playbook, retrieval, advice),
            cost=cost_of(trace.charges),
            latency_ms=latency_ms,
            learned=False,
        )
        if self.learn_enabled and playbook is not None:
            result.learned = self._learn(capsule, context_env, result, task, trace)
            self._learn_rules(capsule, context_env, task, served, verified, playbook)
            result.cost = cost_of(trace.charges)
            result.hops = list(trace.hops)
            result.latency_ms = (time.perf_counter() - started) * 1000
        self.records.save(
            result,
            capsule_kind=capsule.kind,
            charges=trace.charges,
            difficulty=task.difficulty if task else None,
            run_id=self.run_id,
        )
        self._observe(capsule, result, trace)
        return result

    def feedback(self, capsule_id: str, task_id: str, feedback: Feedback) -> FeedbackResult:
        """The client's verdict on an earlier task: recorded, then learned from."""
        capsule = self.parts.capsules.get(capsule_id)
        earlier = self.records.get(task_id, capsule_id)
        self.records.set_feedback(task_id, capsule_id, feedback.success)
        outcome = "success" if feedback.success else "failure"
        self.metrics.outcomes.labels(earlier.route, f"client_{outcome}").inc()
        context_env = self.parts.shards.place(capsule.domain)
        trajectory = trajectory_of(
            capsule,
            earlier,
            task_of(earlier.prompt, capsule.domain),
            judge="client",
            verdict=feedback.success,
            detail=feedback.detail,
            suffix=".feedback",
        )
        learned = self.bridge.context(capsule, context_env).learn(trajectory)
        return FeedbackResult(
            task_id=task_id,
            capsule_id=capsule_id,
            outcome=outcome,
            learned=True,
            playbook_version=learned.version,
        )

    # -- the steps ---------------------------------------------------------------------
    def _cached(
        self, capsule: Capsule, request: TaskRequest, env: str, trace: Trace
    ) -> Served | None:
        started = time.perf_counter()
        found = self.records.cached_answer(capsule.id, request.prompt)
        if found is None:
            return None
        answer, source = found
        trace.hop(
            started,
            layer="cache",
            environment=env,
            model="response-cache",
            ok=True,
            detail=f"verified answer of {source}",
        )
        return Served("cache", answer, env, ["cache"], first_rung=None)

    def _edge(self, capsule: Capsule, request: TaskRequest, trace: Trace) -> Served | None:
        planned = self._assignment_edges(capsule)
        envs = sorted(
            placeable(capsule, self.bridge.environments_hosting(EDGE)),
            key=lambda e: (e.name not in planned, e.name),
        )
        for env in envs:
            started = time.perf_counter()
            try:
                result = self.bridge.edge(capsule, env.name).offload(
                    OffloadRequest(
                        capsule_id=capsule.id,
                        prompts=[request.prompt],
                        max_new_tokens=request.max_tokens,
                    )
                )
            except Unavailable as exc:
                trace.failed(started, "edge", env.name, "edge", exc.one_line())
                self.metrics.fallbacks.labels("edge", env.name).inc()
                continue
            if not result.offloaded or not result.generations:
                trace.failed(started, "edge", env.name, "edge", f"{result.reason}: {result.detail}")
                continue
            generation = result.generations[0]
            trace.hop(
                started,
                layer="edge",
                environment=env.name,
                model=result.node or "edge",
                ok=True,
                tokens=generation.prompt_tokens + generation.completion_tokens,
                mean_entropy=mean_of(generation.entropies),
            )
            trace.charges.append(
                self.parts.pricer.model_tokens(
                    layer="edge",
                    environment=env.name,
                    model=EDGE_MODEL,
                    prompt_tokens=generation.prompt_tokens,
                    completion_tokens=generation.completion_tokens,
                )
            )
            return Served("edge", generation.text, env.name, ["edge"], first_rung="edge")
        return None

    def _rules(
        self, capsule: Capsule, program: str, request: TaskRequest, trace: Trace
    ) -> Served | None:
        """A rule query on the capsule's Tensor Logic program: symbolically and exactly at an
        admitting edge site; what the Boolean program cannot settle, in embedding mode in an
        admitting cloud. None (the cascade serves instead) when neither can."""
        hosts = placeable(capsule, self.bridge.environments_hosting(RULES))
        edges = sorted((e for e in hosts if e.kind == "edge"), key=lambda e: e.name)
        clouds = sorted((e for e in hosts if e.kind != "edge"), key=lambda e: e.name)
        for env, symbolic_only in [*((e, True) for e in edges), *((e, False) for e in clouds)]:
            started = time.perf_counter()
            try:
                response = self.bridge.rules(capsule, env.name).query(
                    RuleRequest(
                        capsule_id=capsule.id,
                        program=program,
                        query=request.prompt,
                        symbolic_only=symbolic_only,
                    )
                )
            except Unavailable as exc:
                trace.failed(started, "tensorlogic", env.name, program, exc.one_line())
                self.metrics.fallbacks.labels("tensorlogic", env.name).inc()
                continue
            if not response.settled or response.answer is None:
                trace.failed(started, "tensorlogic", env.name, program, "not settled by the rules")
                continue
            answer = response.answer
            route: Route = "symbolic" if answer.mode == "symbolic" else "neural"
            trace.hop(
                started,
                layer="tensorlogic",
                environment=env.name,
                model=f"{program}/{answer.mode}",
                ok=True,
                detail=f"confidence {answer.confidence:.2f}: {answer.reason}",
            )
            seconds = time.perf_counter() - started
            trace.charges.append(
                self.parts.pricer.cpu_seconds(
                    layer="tensorlogic", environment=env.name, seconds=seconds
                )
            )
            return Served(route, render(answer), env.name, [f"tensorlogic/{answer.mode}"], None)
        return None

    def _generative(self, capsule: Capsule, request: TaskRequest, trace: Trace) -> Served | None:
        """The RND1-style MoE diffusion layer, decoding with the capsule's own experts; None
        (the cascade serves instead) when no admitting environment can."""
        home = self._home(capsule)
        envs = sorted(
            placeable(capsule, self.bridge.environments_hosting(GENERATIVE)),
            key=lambda e: (e.name != home, e.name),
        )
        for env in envs:
            started = time.perf_counter()
            try:
                response = self.bridge.generative(capsule, env.name).complete(
                    GenerativeRequest(capsule_id=capsule.id, prompt=request.prompt)
                )
            except Unavailable as exc:
                trace.failed(started, "generative", env.name, GENERATIVE_MODEL, exc.one_line())
                self.metrics.fallbacks.labels("generative", env.name).inc()
                continue
            share = response.compute.batch_requests or 1
            trace.hop(
                started,
                layer="generative",
                environment=env.name,
                model=GENERATIVE_MODEL,
                ok=True,
                tokens=len(response.tokens),
                detail=f"{response.steps} steps, {response.experts_active} experts active, "
                f"bias v{response.bias_version}",
            )
            trace.charges.append(
                self.parts.pricer.model_tokens(
                    layer="generative",
                    environment=env.name,
                    model=GENERATIVE_MODEL,
                    prompt_tokens=len(request.prompt),
                    completion_tokens=len(response.tokens) // share,
                )
            )
            answer = response.answer if response.answer is not None else response.text
            return Served(
                "generative", answer, env.name, ["generative"], first_rung=None, generative=response
            )
        return None

    def _verify_rule(self, program: str, query: str, answer: str) -> bool | None:
        """Right or wrong when the Boolean program settles the query; None otherwise, without
        computing the embedding-mode answer the verdict would not use (fitting it costs
        seconds on a verifier's first unsettled query)."""
        if not self.rule_verifier.book.settles(program, query):
            return None
        return self.rule_verifier.verify(program, query, answer)

    def _gen_route(self, capsule: Capsule, request_id: str, task: Task) -> bool:
        """The capsule's declared generative share, or its grade's rule learnt from outcomes
        (the generative layer more accurate than the cascade there: `routing`)."""
        if to_generative(capsule, request_id, task):
            return True
        fits = not task.light and len(task.prompt) <= GENERATIVE_MAX_PROMPT
        return fits and self.generative_routes.prefers_generative(capsule.id, task.difficulty)

    def _tune_generative(self, capsule: Capsule, request_id: str, served: Served) -> None:
        """The answer's expert usage goes into its trajectory (`_learn`), so the context layer
        records it with the outcome; the outcomes recorded so far move the capsule's router
        biases (experts used on a success gain): `generative_outcomes`."""
        assert served.generative is not None
        self.generative_outcomes.wait(request_id, served.generative.expert_load)
        try:
            self.generative_outcomes.settle(
                capsule.id,
                self.bridge.context(capsule, self.parts.shards.place(capsule.domain)),
                self.bridge.generative(capsule, served.environment),
            )
        except Unavailable as exc:
            log.warning("generative feedback not applied", reason=exc.one_line())

    def _cognitive(
        self, capsule: Capsule, request: TaskRequest, advice: RouteAdvice, trace: Trace
    ) -> Served:
        hosts = self.bridge.environments_hosting(COGNITIVE)
        allowed = placeable(capsule, hosts)
        if not allowed:
            raise SovereigntyViolation(
                f"no environment serving the cognitive layer admits capsule {capsule.id!r} "
                f"({', '.join(e.name for e in hosts)})",
                field="allowed_environments",
            )
        home = self._home(capsule)
        tried = []
        for env in sorted(allowed, key=lambda e: (e.name != home, e.name)):
            started = time.perf_counter()
            try:
                response = self.bridge.cognitive(capsule, env.name).complete(
                    CompleteRequest(
                        capsule_id=capsule.id,
                        prompt=request.prompt,
                        max_new_tokens=request.max_tokens,
                        start_tier=advice.start_tier,
                    )
                )
            except Unavailable as exc:
                trace.failed(started, "cognitive", env.name, "auto", exc.one_line())
                self.metrics.fallbacks.labels("cognitive", env.name).inc()
                tried.append(env.name)
                continue
            return self._charge_cascade(env.name, response, started, trace)
        raise Unavailable(
            f"no environment allowed for capsule {capsule.id!r} could serve it "
            f"(tried {', '.join(tried)})",
            field="environment",
        )

    def _charge_cascade(
        self, env: str, response: CompleteResponse, started: float, trace: Trace
    ) -> Served:
        decisions = response.decisions
        share = (time.perf_counter() - started) * 1000 / max(1, len(decisions))
        for decision in decisions:
            verdict = "handed on" if decision.escalated else "answered"
            threshold = "" if decision.threshold is None else f" vs {decision.threshold:.3f}"
            trace.hops.append(
                Hop(
                    layer="cognitive",
                    environment=env,
                    model=decision.tier,
                    ok=True,
                    detail=f"{verdict}: signal {decision.signal:.3f}{threshold}",
                    tokens=decision.prompt_tokens + decision.completion_tokens,
                    latency_ms=share,
                )
            )
            trace.charges.append(
                self.parts.pricer.model_tokens(
                    layer="cognitive",
                    environment=env,
                    model=get_tier(decision.tier).preset,
                    prompt_tokens=decision.prompt_tokens,
                    completion_tokens=decision.completion_tokens,
                )
            )
        if decisions:
            trace.hops[-1].mean_entropy = mean_of(response.entropies)
        path = [f"cognitive/{d.tier}" for d in decisions] or ["cognitive"]
        first = decisions[0] if decisions else None
        return Served(
            "cognitive",
            response.text,
            env,
            path,
            first_rung=first.tier if first else None,
            first_failed=bool(first and first.escalated),
            escalated=len(decisions) > 1,
        )

    def _learn(
        self, capsule: Capsule, env: str, result: TaskResult, task: Task | None, trace: Trace
    ) -> bool:
        verdict = result.verified
        trajectory = trajectory_of(
            capsule,
            result,
            task,
            judge="verifier" if verdict is not None else "none",
            verdict=verdict,
            detail=self.generative_outcomes.detail(
                result.id, task.answer if task else None, verdict
            ),
            suffix="",
        )
        started = time.perf_counter()
        try:  # durably queued: the shard's worker learns from it off the request path
            self.bridge.context(capsule, env).submit(trajectory)
        except Unavailable as exc:
            log.warning("learning skipped", capsule=capsule.id, reason=exc.one_line())
            trace.failed(started, "context", env, "learn", exc.one_line())
            return False
        trace.hop(started, layer="context", environment=env, model="learn", ok=True)
        trace.charges.append(
            self.parts.pricer.cpu_seconds(
                layer="context", environment=env, seconds=time.perf_counter() - started
            )
        )
        return True

    def _learn_rules(
        self,
        capsule: Capsule,
        env: str,
        task: Task | None,
        served: Served,
        verified: bool | None,
        playbook: PlaybookView,
    ) -> None:
        if task is None or verified is None or served.first_rung is None:
            return
        failed = served.first_failed or (len(served.path) == 1 and not verified)
        delta = self.rules.observe(
            capsule.domain, task.kind, served.first_rung, failed, ranked(playbook.bullets)
        )
        if delta is not None:
            # In the caller's context: the request's pinned capsule (`parts.CapsuleDirectory`).
            future = self._rule_writes.submit(
                copy_context().run, self._store_rule, capsule, env, delta
            )
            with self._pending_lock:
                self._pending_rules = [f for f in self._pending_rules if not f.done()]
                self._pending_rules.append(future)

    def _store_rule(self, capsule: Capsule, env: str, delta: Delta) -> None:
        try:
            self.bridge.context(capsule, env).apply_delta(capsule.id, delta)
            log.info(
                "routing rule learned",
                domain=capsule.domain,
                rule=getattr(delta.ops[0], "content", ""),
            )
        except Unavailable as exc:
            log.warning("routing rule not stored", reason=exc.one_line())

    def settle(self, timeout_s: float | None = 60.0) -> None:
        """Wait for the routing rules being stored (a run's report counts them)."""
        with self._pending_lock:
            pending, self._pending_rules = self._pending_rules, []
        wait(pending, timeout=timeout_s)

    def _observe(self, capsule: Capsule, result: TaskResult, trace: Trace) -> None:
        m = self.metrics
        m.requests.labels(result.route, capsule.kind).inc()
        m.latency.labels(result.route).observe(result.latency_ms / 1000)
        verdict = {True: "correct", False: "wrong", None: "unknown"}[result.verified]
        m.outcomes.labels(result.route, verdict).inc()
        if result.escalated:
            m.escalations.labels(capsule.kind).inc()
        for hop in trace.hops:
            m.layer_latency.labels(hop.layer).observe(hop.latency_ms / 1000)
        for charge in trace.charges:
            m.cost.labels(charge.layer, charge.environment, capsule.kind).inc(charge.usd)
            m.accelerator_seconds.labels(charge.layer, charge.accelerator or "cpu").inc(
                charge.accelerator_seconds
            )

    # -- the plan's view of a capsule --------------------------------------------------
    def _home(self, capsule: Capsule) -> str | None:
        assignment = self.parts.assignments.get(capsule.id)
        return assignment.environment if assignment else None

    def _assignment_edges(self, capsule: Capsule) -> set[str]:
        assignment = self.parts.assignments.get(capsule.id)
        return set(assignment.edge_environments) if assignment else set()
