"""The service: completions with a capsule's mask and biases, online load tuning, feedback."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tests.generative.conftest import mask_experts
from trifecta.core.db import get_engine
from trifecta.core.tasks import generate_tasks
from trifecta.generative.selection import configured_mask
from trifecta.generative.service import GenerativeRequest, GenerativeService
from trifecta.generative.store import GenerativeStore


@pytest.fixture
def service(shipped, sqlite_url: str) -> GenerativeService:
    return GenerativeService(shipped, GenerativeStore(get_engine(sqlite_url)))


def _requests(capsule: str, n: int = 8) -> list[GenerativeRequest]:
    tasks = generate_tasks(n, seed=11, split="heldout", difficulties=[2, 3])
    return [GenerativeRequest(capsule_id=capsule, prompt=t.prompt) for t in tasks]


def test_a_batch_is_served_and_tunes_the_capsules_biases(service: GenerativeService) -> None:
    responses = service.complete_batch(_requests("c1"))
    assert all(r.answer is not None and r.steps >= 1 for r in responses)
    c = service.model.config
    every = c.n_layers * c.n_experts
    assert all(r.experts_active == every for r in responses)
    assert responses[0].compute.experts_total == every
    assert responses[0].compute.forward_passes >= 4
    # each request's own load: every counted token chose top_k experts per layer
    for r in responses:
        per_layer = torch.tensor(r.expert_load).sum(dim=1)
        assert bool((per_layer == per_layer[0]).all()) and int(per_layer[0]) % c.top_k == 0
    history = service.store.bias_history("c1")
    assert len(history) == 1 and history[0].reason == "load: 8 requests"
    traffic = service.store.traffic("c1")
    assert traffic is not None and traffic[1] == 8
    assert service.store.bias_history("c2") == []


def test_a_capsule_mask_limits_the_experts_that_run(service: GenerativeService) -> None:
    c = service.model.config
    experts = mask_experts(c.top_k)
    service.store.put_mask("c1", configured_mask(experts, c.n_layers))
    responses = service.complete_batch(_requests("c1"))
    r = responses[0]
    allowed = len(experts) * c.n_layers
    assert r.experts_active == allowed and r.compute.experts_touched <= allowed
    for row in r.expert_load:
        assert all(count == 0 for e, count in enumerate(row) if e not in experts)


def test_feedback_moves_the_used_experts(service: GenerativeService) -> None:
    response = service.complete(_requests("c1", 1)[0])
    before = service.store.current_bias("c1", service.shape).tensor()
    after = service.feedback("c1", response.expert_load, success=True).tensor()
    used = torch.tensor(response.expert_load) > 0
    assert bool((after[used] > before[used]).all()) and bool((after[~used] == before[~used]).all())
    worse = service.feedback("c1", response.expert_load, success=False).tensor()
    assert torch.allclose(worse, before, atol=1e-5)  # a failure undoes an equal success


def test_bad_requests_name_the_field(service: GenerativeService) -> None:
    from trifecta.core.errors import InvalidInput

    with pytest.raises(InvalidInput) as err:
        service.complete(GenerativeRequest(capsule_id="c1", prompt="41+17?", steps=0))
    assert err.value.field == "steps"
    with pytest.raises(InvalidInput) as err:
        service.feedback("c1", [[1, 2]], success=True)
    assert err.value.field == "expert_load"
    with pytest.raises(ValidationError):
        GenerativeRequest(capsule_id="", prompt="41+17?")


def test_a_mask_learned_from_traffic_serves_the_capsule(service: GenerativeService) -> None:
    from trifecta.generative.selection import learn_mask

    service.complete_batch(_requests("c1", 16))
    traffic = service.store.traffic("c1")
    assert traffic is not None
    mask = learn_mask(traffic[0], 0.8, service.model.config.top_k)
    service.store.put_mask("c1", mask)
    response = service.complete(_requests("c1", 1)[0])
    allowed = mask.active(service.model.config.n_experts)
    used = torch.tensor(response.expert_load) > 0
    assert not bool((used & ~allowed).any())
    assert response.experts_active == mask.active_count()
