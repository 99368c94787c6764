"""The service: completions with a capsule's mask and biases, online load tuning, feedback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from tests.generative.conftest import mask_experts
from tests.generative.test_ray_experts import Recorder
from trifecta.core.db import get_engine
from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import generate_tasks
from trifecta.generative.model import DiffusionLM
from trifecta.generative.selection import configured_mask, half_mask
from trifecta.generative.service import GenerativeRequest, GenerativeService
from trifecta.generative.settings import GenerativeSettings
from trifecta.generative.store import GenerativeStore


@pytest.fixture
def service(shipped: DiffusionLM, sqlite_url: str) -> GenerativeService:
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


def _capsule_masks(store: GenerativeStore, model: DiffusionLM) -> None:
    """c-drop: a configured mask; c-merge: the half mask with its dropped experts merged."""
    c = model.config
    store.put_mask("c-drop", configured_mask(mask_experts(c.top_k), c.n_layers))
    load = torch.arange(c.n_layers * c.n_experts, dtype=torch.float32).view(c.n_layers, -1) + 1
    store.put_mask("c-merge", half_mask(load, 4, c.top_k, model.router_weights()))


def test_placed_experts_serve_what_the_model_serves(shipped: DiffusionLM, tmp_path: Path) -> None:
    """The service with its experts on two placed nodes (in this process) answers as the
    model does, for a capsule with every expert, a dropped mask and a merged mask."""
    stores = [GenerativeStore(get_engine(f"sqlite:///{tmp_path / f'{i}.db'}")) for i in (0, 1)]
    for store in stores:
        _capsule_masks(store, shipped)
    plain = GenerativeService(shipped, stores[0], online_load=False)
    placed = GenerativeService(
        shipped, stores[1], online_load=False, experts=GenerativeSettings(expert_nodes=2)
    )
    assert [p.cluster.nodes for p in placed.placements] == [2] * shipped.config.n_layers
    assert plain.placements == [] and all(b.moe.executor is None for b in shipped.blocks())
    assert placed.prepare_capsule("c-merge") > 0  # the merged experts shipped ahead
    for capsule in ("c-all", "c-drop", "c-merge"):
        recorders = [Recorder(layer) for layer in placed.placed]
        requests = _requests(capsule, 6)
        for a, b in zip(
            plain.complete_batch(requests), placed.complete_batch(requests), strict=True
        ):
            assert a.tokens == b.tokens and a.expert_load == b.expert_load, capsule
        mask = stores[1].mask(capsule)
        for layer, recorder in enumerate(recorders):
            assert recorder.calls  # the tokens ran on the nodes
            if mask is not None:  # a masked expert never reached a node
                assert recorder.experts() <= set(mask.layers[layer]), capsule
        merged = {tag for r in recorders for _, _, tag, _ in r.calls if tag is not None}
        assert bool(merged) == (capsule == "c-merge")  # merged weights where the mask merges


def test_expert_placement_is_a_setting(
    shipped: DiffusionLM, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trifecta.core.errors import NotFound

    monkeypatch.setenv("TRIFECTA_GENERATIVE_EXPERT_NODES", "3")
    monkeypatch.setenv("TRIFECTA_GENERATIVE_SLOTS_PER_NODE", "4")
    service = GenerativeService(shipped, GenerativeStore(get_engine(sqlite_url)))
    placements = service.placements
    assert len(placements) == shipped.config.n_layers
    assert all(p.cluster.slots == [4, 4, 4] for p in placements)
    with pytest.raises(NotFound) as err:
        service.prepare_capsule("nobody")
    assert err.value.field == "capsule"
    monkeypatch.setenv("TRIFECTA_GENERATIVE_SLOTS_PER_NODE", "2")
    with pytest.raises(InvalidInput) as bad:
        GenerativeService(shipped, GenerativeStore(get_engine(sqlite_url)))
    assert bad.value.field == "slots_per_node"
