from __future__ import annotations

import datetime as dt
import time

import pytest

from trifecta.context.facade import ContextService
from trifecta.core.errors import NotFound, QuotaExceeded
from trifecta.core.tasks import generate_tasks, normalize_answer
from trifecta.fleet.capsules import Capsule, Demand
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.models import Feedback, TaskRequest
from trifecta.orchestrator.parts import CAPSULE_TTL_S
from trifecta.orchestrator.records import SavedRows, prompt_hash
from trifecta.orchestrator.stack import Stack
from trifecta.orchestrator.tables import requests


def _capsule(stack: Stack, suffix: str, **fields: object) -> Capsule:
    capsule = Capsule(
        id=f"t-{suffix}", name=suffix, kind="digital_twin", domain=f"d-{suffix}", **fields
    )
    return stack.add_capsule(capsule)


def test_a_task_goes_through_every_step_and_is_logged(
    stack: Stack, context: ContextService
) -> None:
    orchestrator = Orchestrator(stack.parts, run_id="loop-1")
    capsule = _capsule(stack, "steps")
    task = generate_tasks(1, seed=3, split="heldout", difficulties=[3], domain=capsule.domain)[0]
    result = orchestrator.serve(capsule.id, TaskRequest(prompt=task.prompt))
    # The start router picks the first tier from the prompt's structure; the cascade goes on.
    assert result.route == "cognitive" and result.path[0].startswith("cognitive/")
    stated = normalize_answer(result.answer) if result.answer is not None else None
    assert result.verified == (stated == task.answer)  # a worked answer's final step
    assert result.context is not None and result.context.domain == capsule.domain
    assert result.learned
    layers = [h.layer for h in result.hops]
    assert layers[0] == "context" and "cognitive" in layers
    assert result.cost.usd == pytest.approx(sum(result.cost.by_layer.values()))
    assert result.cost.by_layer["cognitive"] > 0 and result.cost.by_layer["context"] > 0
    # Logged with its charges; the ledger and the request agree.
    assert orchestrator.records.get(result.id, capsule.id).answer == result.answer
    rollup = stack.parts.ledger.rollup("capsule_id", capsule_ids=[capsule.id])
    assert rollup[0].usd == pytest.approx(result.cost.usd) and rollup[0].requests == 1
    # The context layer now holds a memory of it.
    assert context.drain(30)  # learning runs off the request path
    stats = context.stats(capsule.id)
    assert stats.memories == 1


def test_light_tasks_go_to_the_edge_and_heavy_ones_do_not(stack: Stack) -> None:
    orchestrator = Orchestrator(stack.parts)
    capsule = _capsule(stack, "light")
    light = generate_tasks(3, seed=4, split="heldout", difficulties=[2], domain=capsule.domain)
    heavy = generate_tasks(2, seed=4, split="heldout", difficulties=[5], domain=capsule.domain)
    for task in light:
        result = orchestrator.serve(capsule.id, TaskRequest(prompt=task.prompt))
        assert result.route == "edge" and result.environment in stack.meshes
        assert result.cost.by_layer["edge"] > 0
    for task in heavy:
        assert orchestrator.serve(capsule.id, TaskRequest(prompt=task.prompt)).route == "cognitive"


def test_a_verified_answer_is_served_from_the_cache_next_time(stack: Stack) -> None:
    orchestrator = Orchestrator(stack.parts)
    capsule = _capsule(stack, "cache")
    verified = 0
    for prompt in ("a=12,b=30;a?", "41+17?", "20+33?", "c=5,d=71,e=9;d?"):
        first = orchestrator.serve(capsule.id, TaskRequest(prompt=prompt))
        again = orchestrator.serve(capsule.id, TaskRequest(prompt=prompt))
        if first.verified:
            verified += 1
            assert again.route == "cache" and again.answer == first.answer and again.verified
            assert "cognitive" not in again.cost.by_layer and "edge" not in again.cost.by_layer
        else:  # a wrong answer is never cached
            assert again.route != "cache"
    assert verified, "the shipped models answered none of these light tasks"
    prompt = "41+17?"
    # Another capsule never sees this capsule's cache.
    other = _capsule(stack, "cache-other")
    assert orchestrator.serve(other.id, TaskRequest(prompt=prompt)).route != "cache"


def test_client_feedback_is_recorded_and_learned(stack: Stack, context: ContextService) -> None:
    orchestrator = Orchestrator(stack.parts)
    capsule = _capsule(stack, "feedback")
    result = orchestrator.serve(capsule.id, TaskRequest(prompt="t=5,p=7;t+p?"))
    before = context.stats(capsule.id).memories
    answer = orchestrator.feedback(capsule.id, result.id, Feedback(success=False, detail="wrong"))
    assert answer.outcome == "failure" and answer.learned
    assert context.stats(capsule.id).memories >= before  # a failure lesson (or reinforced)
    # A verified-wrong answer overruled by the client as right becomes cacheable.
    orchestrator.feedback(capsule.id, result.id, Feedback(success=True))
    assert orchestrator.records.cached_answer(capsule.id, "t=5,p=7;t+p?") is not None
    with pytest.raises(NotFound):
        orchestrator.feedback(capsule.id, "req-unknown", Feedback(success=True))


def test_request_ids_make_submission_idempotent(stack: Stack) -> None:
    orchestrator = Orchestrator(stack.parts)
    capsule = _capsule(stack, "idem")
    first = orchestrator.serve(capsule.id, TaskRequest(prompt="9+9?", request_id="fixed-1"))
    second = orchestrator.serve(capsule.id, TaskRequest(prompt="9+9?", request_id="fixed-1"))
    assert first == second and orchestrator.records.count() >= 1


def test_quota_refuses_with_retry_after(stack: Stack) -> None:
    orchestrator = Orchestrator(stack.parts, learn=False)
    capsule = _capsule(stack, "quota", quota_rps=1.0, demand=Demand(requests_per_s=1))
    orchestrator.serve(capsule.id, TaskRequest(prompt="1+2?"))
    with pytest.raises(QuotaExceeded) as err:
        orchestrator.serve(capsule.id, TaskRequest(prompt="1+3?"))
    assert 0 < err.value.retry_after <= 1.0


def test_unknown_capsule_is_not_found(stack: Stack) -> None:
    with pytest.raises(NotFound) as err:
        Orchestrator(stack.parts).serve("nobody", TaskRequest(prompt="1+1?"))
    assert err.value.field == "capsule_id"


def test_free_text_is_served_unverified_and_awaits_feedback(stack: Stack) -> None:
    orchestrator = Orchestrator(stack.parts)
    capsule = _capsule(stack, "free")
    result = orchestrator.serve(capsule.id, TaskRequest(prompt="status?"))
    assert result.route == "cognitive" and result.verified is None and result.learned
    assert orchestrator.records.cached_answer(capsule.id, "status?") is None
    orchestrator.feedback(capsule.id, result.id, Feedback(success=True))
    assert orchestrator.records.cached_answer(capsule.id, "status?") is not None


def test_a_capsule_changed_by_another_process_applies_within_the_auth_bound(
    stack: Stack,
) -> None:
    """`trifecta capsule ...` writes the registry from another process; the running loop
    serves under the new policy within the capsule ttl of the commit (the auth layer's half
    second, `parts.CAPSULE_TTL_S`), and not at all once removed."""
    from trifecta.fleet.registry import CapsuleRegistry

    capsule = stack.add_capsule(
        Capsule(id="changed", name="c", kind="digital_twin", domain="changed")
    )
    orchestrator = Orchestrator(stack.parts)
    orchestrator.serve(capsule.id, TaskRequest(prompt="a=1,b=2;a?"))
    elsewhere = CapsuleRegistry(stack.engine)  # what the CLI process holds
    elsewhere.add(capsule.model_copy(update={"quota_rps": 0.001}), replace=True)
    _wait_out_the_bound(time.monotonic())
    orchestrator.serve(capsule.id, TaskRequest(prompt="a=1,b=2;b?"))  # the new bucket's burst
    with pytest.raises(QuotaExceeded):
        orchestrator.serve(capsule.id, TaskRequest(prompt="a=1,b=3;b?"))
    elsewhere.remove(capsule.id)
    _wait_out_the_bound(time.monotonic())
    with pytest.raises(NotFound):
        orchestrator.serve(capsule.id, TaskRequest(prompt="a=1,b=4;b?"))


def _wait_out_the_bound(committed: float) -> None:
    time.sleep(max(0.0, CAPSULE_TTL_S - (time.monotonic() - committed)) + 0.01)


def test_a_request_reads_its_capsule_once_for_all_its_hops(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each hop's environment (and the context layer's tenancy check) admits the capsule as
    the request read it at its start: at most one registry look-up a request, none while the
    capsule's row was read within the ttl (above)."""
    orchestrator = Orchestrator(stack.parts)
    capsule = _capsule(stack, "reads")
    rows = stack.capsules._spec_of  # the directory's read of a capsule's row
    real_read = rows.read
    reads: list[str] = []

    def counted_read(*, capsule_id: str) -> tuple[object, ...] | None:
        reads.append(capsule_id)
        return real_read(capsule_id=capsule_id)

    registry_reads: list[str] = []
    real_get = stack.capsules.registry.get

    def counted_get(capsule_id: str) -> Capsule:
        registry_reads.append(capsule_id)
        return real_get(capsule_id)

    monkeypatch.setattr(rows, "read", counted_read)
    monkeypatch.setattr(stack.capsules.registry, "get", counted_get)
    stack.capsules._fresh.clear()  # as if the capsule's row was read over a ttl ago
    assert stack.context is not None
    stack.context.tenancy.forget()  # nor remembered by the context layer
    task = generate_tasks(1, seed=5, split="heldout", difficulties=[3], domain=capsule.domain)[0]
    result = orchestrator.serve(capsule.id, TaskRequest(prompt=task.prompt))
    models = [h.model for h in result.hops if h.layer == "context"]
    assert {"playbook", "retrieve", "learn"} <= set(models)  # three context hops at least
    assert any(h.layer == "cognitive" for h in result.hops)
    assert reads == [capsule.id]
    orchestrator.serve(capsule.id, TaskRequest(prompt=task.prompt + " "))
    assert reads == [capsule.id]  # read within the ttl: served from memory
    assert registry_reads == []  # the context layer's tenancy read the pinned capsule


def test_requests_logged_together_share_a_transaction_and_fail_alone(stack: Stack) -> None:
    """Requests finishing at once are logged in one transaction with their charges; one
    whose id is already logged fails alone (its caller gets the error), the others land."""
    from sqlalchemy.exc import IntegrityError

    from trifecta.orchestrator.ledger import CostLedger

    orchestrator = Orchestrator(stack.parts)
    capsule = _capsule(stack, "logged")
    first = orchestrator.serve(capsule.id, TaskRequest(prompt="a=1,b=2;a?"))
    records = orchestrator.records

    def rows(result_id: str) -> SavedRows:
        copy = first.model_copy(update={"id": result_id})
        row: dict[str, object] = {c.name: None for c in requests.columns} | {
            "id": copy.id,
            "capsule_id": copy.capsule_id,
            "prompt": copy.prompt,
            "prompt_hash": prompt_hash(copy.prompt),
            "route": copy.route,
            "path": copy.path,
            "environment": copy.environment,
            "latency_ms": 1.0,
            "tokens": 0,
            "cost_usd": 0.0,
            "detail": copy.model_dump(mode="json"),
            "created_at": dt.datetime.now(dt.UTC),
        }
        charged = CostLedger.rows(
            request_id=copy.id,
            capsule_id=copy.capsule_id,
            capsule_kind="digital_twin",
            items=[],
            at=dt.datetime.now(dt.UTC),
        )
        return row, charged

    out = records._save_group([rows("req-group-1"), rows(first.id), rows("req-group-2")])
    assert out[0] is True and out[2] is True and isinstance(out[1], IntegrityError)
    assert records.get("req-group-1", capsule.id).answer == first.answer
    assert records.get("req-group-2", capsule.id).answer == first.answer


def test_a_capsules_generative_share_goes_to_the_moe_diffusion_layer(stack: Stack) -> None:
    """All of this capsule's heavy requests are declared generative: they are served by the
    MoE diffusion model, charged at the RND1 preset, and their verdicts move the capsule's
    router biases (the outcome rule)."""
    capsule = stack.add_capsule(
        Capsule(
            id="gen-twin",
            name="g",
            kind="digital_twin",
            domain="gen",
            demand=Demand(requests_per_s=1, light_share=0.0, generative_share=1.0),
        )
    )
    assert stack.generative is not None
    before = stack.generative.store.current_bias(capsule.id, stack.generative.shape).version
    orchestrator = Orchestrator(stack.parts, run_id="gen")
    task = generate_tasks(1, seed=4, split="heldout", difficulties=[3], domain="gen")[0]
    result = orchestrator.serve(capsule.id, TaskRequest(prompt=task.prompt))
    assert result.route == "generative" and result.path == ["generative"]
    (hop,) = [h for h in result.hops if h.layer == "generative"]
    assert hop.ok and hop.model == "rnd1-30b-a3b" and "experts active" in hop.detail
    assert result.verified is not None and result.cost.by_layer["generative"] > 0
    after = stack.generative.store.current_bias(capsule.id, stack.generative.shape).version
    assert after > before  # load and outcome rules both wrote a version


def test_rule_queries_are_symbolic_at_the_edge_and_neural_in_the_cloud(stack: Stack) -> None:
    """A twin owning the shipped `plant` program: a query the rules settle is answered exactly
    by an edge site (from the program artifact its mesh synced) and checked by the verifier;
    one that depends on a learnable tensor goes to the cloud, in embedding mode."""
    capsule = stack.add_capsule(
        Capsule(id="rules-twin", name="r", kind="digital_twin", domain="rules", program="plant")
    )
    orchestrator = Orchestrator(stack.parts)
    exact = orchestrator.serve(capsule.id, TaskRequest(prompt="Downstream[v1, p3]?"))
    assert exact.route == "symbolic" and exact.answer == "yes" and exact.verified is True
    assert exact.environment is not None, "an answer the rules settle names its edge site"
    assert stack.topology.environment(exact.environment).kind == "edge"
    listed = orchestrator.serve(capsule.id, TaskRequest(prompt="Sees[who, filter]?"))
    assert listed.answer == "level,press1,turbidity" and listed.verified is True
    soft = orchestrator.serve(capsule.id, TaskRequest(prompt="Seeps[intake, p1]?"))
    assert soft.route == "neural" and soft.verified is None
    assert soft.environment is not None, "a neural answer names the site that served it"
    assert stack.topology.environment(soft.environment).kind != "edge"
    (hop,) = [h for h in soft.hops if h.ok and h.layer == "tensorlogic"]
    assert hop.model == "plant/embedding" and "confidence" in hop.detail
    edge_refusal = [h for h in soft.hops if not h.ok and h.layer == "tensorlogic"]
    assert edge_refusal and all("not settled" in h.detail for h in edge_refusal)


def test_a_shard_entry_without_a_place_is_never_re_homed(stack: Stack) -> None:
    from trifecta.core.errors import Infeasible

    shards = stack.shards
    home = stack.add_capsule(Capsule(id="np-a", name="a", kind="digital_twin", domain="np-a"))
    url = shards.shard_url["inference"]
    shards.shard_map.assign(home.domain, url, None)  # as a move without --place left it
    assert stack.place_domain(home.domain) == "inference"  # derived from its database
    entry = shards.shard_map.get(home.domain)
    assert entry is not None and entry[0] == url and entry[1] is not None
    stray = stack.add_capsule(Capsule(id="np-b", name="b", kind="digital_twin", domain="np-b"))
    shards.shard_map.assign(stray.domain, "sqlite:////somewhere/else.db", None)
    with pytest.raises(Infeasible, match="no known environment"):
        stack.place_domain(stray.domain)
    entry = shards.shard_map.get(stray.domain)
    assert entry is not None and entry[0] == "sqlite:////somewhere/else.db"  # left alone


def test_a_routing_rule_is_stored_off_the_request_path_and_a_run_waits_for_it(
    stack: Stack,
) -> None:
    from trifecta.orchestrator.routing import MIN_SAMPLES, START, advise
    from trifecta.orchestrator.trace import Served, Trace, ranked

    orchestrator = Orchestrator(stack.parts)
    capsule = _capsule(stack, "rules")
    task = generate_tasks(1, seed=4, split="heldout", difficulties=[4], domain=capsule.domain)[0]
    for i in range(MIN_SAMPLES):  # the fleet's small tier hands `chain` tasks on elsewhere
        orchestrator.rules.observe(f"elsewhere-{i}", task.kind, "small", failed=True)
    env = stack.parts.shards.place(capsule.domain)
    playbook = orchestrator.context_hop.playbook(capsule, env, Trace())
    assert playbook is not None
    served = Served("cognitive", "0", env, ["cognitive/small"], "small", first_failed=True)
    orchestrator._learn_rules(capsule, env, task, served, False, playbook)  # returns at once
    orchestrator.settle()
    stored = orchestrator.context_hop.playbook(capsule, env, Trace())
    assert stored is not None
    rules = [b for b in stored.bullets if b.section == START + task.kind]
    assert len(rules) == 1
    advice = advise(task.kind, ranked(stored.bullets), stack.parts.tiers)
    assert advice.start_tier == "medium" and advice.rules == (rules[0].id,)
