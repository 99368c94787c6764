"""Cached retrieval survives writes and stays exact: after any sequence of learns and
retrieves, a cached retrieve equals the uncached full search over the shard."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.context.conftest import ServiceFactory
from trifecta.context.facade import ContextService
from trifecta.context.models import Retrieval, RetrieveRequest
from trifecta.context.trajectory import Trajectory, TrajectoryStep
from trifecta.core.tasks import generate_tasks

PROMPTS = [t.prompt for t in generate_tasks(6, seed=3, domain="plant")]
CAPSULE = "twin-a"
TRAJECTORY_IDS = itertools.count(1000)  # unique across examples (one shard for all)


def trajectory(number: int, prompt: int, ok: bool) -> Trajectory:
    return Trajectory(
        id=f"traj-{number}",
        capsule_id=CAPSULE,
        prompt=PROMPTS[prompt],
        answer="42" if ok else "0",
        outcome="success" if ok else "failure",
        judge="verifier",
        verdict_detail=None if ok else "expected 42",
        steps=[TrajectoryStep(layer="cognitive", tier="small", mean_entropy=0.4 + prompt / 10)],
    )


def same_answer(cached: Retrieval, fresh: Retrieval) -> None:
    assert [h.memory.id for h in cached.memories] == [h.memory.id for h in fresh.memories]
    assert [h.memory for h in cached.memories] == [h.memory for h in fresh.memories]
    assert [h.similarity for h in cached.memories] == pytest.approx(
        [h.similarity for h in fresh.memories], abs=1e-5
    )
    assert [b.bullet for b in cached.bullets] == [b.bullet for b in fresh.bullets]
    assert cached.prompt == fresh.prompt
    assert cached.version == fresh.version


learn_step = st.tuples(st.just("learn"), st.integers(0, len(PROMPTS) - 1), st.booleans())
retrieve_step = st.tuples(
    st.just("retrieve"), st.integers(0, len(PROMPTS) - 1), st.sampled_from([1, 3])
)


@pytest.fixture
def pair(make_service: ServiceFactory, sqlite_url: str) -> tuple[ContextService, ContextService]:
    """A caching service (views, standing searches, result cache; no Redis) and an uncached
    one over the same shard."""
    return make_service(sqlite_url, redis_url=""), make_service(sqlite_url, cache=False)


@pytest.mark.slow
@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(learn_step, retrieve_step), min_size=2, max_size=7))
def test_cached_retrieve_equals_uncached_after_any_learns(
    pair: tuple[ContextService, ContextService], steps: list
) -> None:
    cached, uncached = pair  # one shard across examples: each sequence continues the last
    for kind, prompt, arg in steps:
        if kind == "learn":
            cached.learn(trajectory(next(TRAJECTORY_IDS), prompt, bool(arg)))
            continue
        request = RetrieveRequest(query=PROMPTS[prompt], k_memories=arg)
        same_answer(cached.retrieve(CAPSULE, request), uncached.retrieve(CAPSULE, request))


def test_a_learned_memory_updates_the_standing_search_in_place(
    pair: tuple[ContextService, ContextService],
) -> None:
    """Through the learning worker (which applies its own writes to the live view), a
    retrieve after a learn is answered from the standing search it updated, not a new one."""
    cached, uncached = pair
    request = RetrieveRequest(query=PROMPTS[0], k_memories=3)
    for i in range(3):
        cached.learn(trajectory(i, i, True))
        cached.retrieve(CAPSULE, request)  # asked again after a write: it stands from its second
    view = cached.views.get("plant", cached.router.store_for, cached.current_version("plant"))
    before = view.searches.stats()
    try:
        cached.submit(trajectory(100, 0, False))
        assert cached.drain(60)
        answer = cached.retrieve(CAPSULE, request)
    finally:
        cached.close()
    after = view.searches.stats()
    assert after["standing"] == before["standing"]  # no new search was made
    assert after["standing_updated"] > before["standing_updated"]  # the new memory entered
    assert cached.cache_stats()["standing_updated"] == after["standing_updated"]  # /health
    assert any(h.memory.outcome == "failure" for h in answer.memories)
    same_answer(answer, uncached.retrieve(CAPSULE, request))
