"""The generative layer's placement over HTTP, from the client side: an admin reads what the
nodes run (version, experts and load per node, the decisions log) and rebalances, adds and
removes nodes on a running service on placed nodes (the shipped model, two nodes in this
process); a capsule's key is refused on both routes; bad input is 422 naming the field and
changes nothing; a server without placed nodes, or with nothing to place from, is 409."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from trifecta.core.db import get_engine
from trifecta.core.http import install_error_handlers
from trifecta.core.tasks import generate_tasks
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore
from trifecta.fleet.registry import CapsuleRegistry
from trifecta.generative.artifact import load_model
from trifecta.generative.assets import shipped_model_path
from trifecta.generative.model import DiffusionLM
from trifecta.generative.service import GenerativeRequest, GenerativeService
from trifecta.generative.settings import GenerativeSettings
from trifecta.generative.store import GenerativeStore
from trifecta.serve.generative_admin import generative_admin_routes

TENANT = Capsule(id="gen-ops", name="Generative ops", kind="digital_twin", domain="gen-ops")
PLACEMENT = "/v1/generative/placement"
REBALANCE = "/v1/generative/placement/rebalance"
# 2 nodes of 5 slots (8 experts and 2 redundant slots), between 2 and 4 nodes; no online
# rebalance, so every change here is the routes'.
SETTINGS = {
    "expert_nodes": 2,
    "slots_per_node": 5,
    "min_nodes": 2,
    "max_nodes": 4,
    "rebalance_threshold": None,
    "rebalance_time_limit_s": 0.3,
}


@pytest.fixture(scope="module")
def shipped() -> DiffusionLM:
    torch.set_num_threads(1)
    return load_model(shipped_model_path())


@dataclass
class Admin:
    client: TestClient
    service: GenerativeService
    admin: dict[str, str]
    tenant: dict[str, str]


def _app(service: GenerativeService, keys: KeyStore) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, max_body_bytes=1 << 20)
    app.include_router(generative_admin_routes(service, keys))
    return app


def _served(shipped: DiffusionLM, tmp_path: Path, **settings: object) -> Iterator[Admin]:
    engine = get_engine(f"sqlite:///{tmp_path / 'control.db'}")
    experts = GenerativeSettings.model_validate(settings)
    service = GenerativeService(
        shipped, GenerativeStore(engine), online_load=False, experts=experts
    )
    CapsuleRegistry(engine).add(TENANT)
    keys = KeyStore(engine)
    admin = {"Authorization": f"Bearer {keys.create(admin=True).token}"}
    tenant = {"Authorization": f"Bearer {keys.create(capsule_id='gen-ops').token}"}
    with TestClient(_app(service, keys)) as client:
        yield Admin(client, service, admin, tenant)


@pytest.fixture
def placed(shipped: DiffusionLM, tmp_path: Path) -> Iterator[Admin]:
    yield from _served(shipped, tmp_path, **SETTINGS)


def _serve_batch(service: GenerativeService) -> list[list[int]]:
    tasks = generate_tasks(6, seed=5, split="heldout", difficulties=[3, 4])
    requests = [GenerativeRequest(capsule_id="gen-ops", prompt=t.prompt) for t in tasks]
    return [r.tokens for r in service.complete_batch(requests)]


def _refused(response: object, status: int, field: str) -> None:
    assert hasattr(response, "status_code") and hasattr(response, "json")
    assert response.status_code == status, response.json()
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["message"].startswith(f"{field}: "), error


def test_the_placement_reads_what_the_nodes_run_and_their_load(placed: Admin) -> None:
    service = placed.service
    _serve_batch(service)
    view = placed.client.get(PLACEMENT, headers=placed.admin)
    assert view.status_code == 200, view.text
    body = view.json()
    assert body["placed"] is True and body["nodes"] == 2
    assert body["version"] == body["newest_version"] == service.placement_version == 1
    assert body["bounds"] | {"slots_per_node": None} == {
        "min_nodes": 2,
        "max_nodes": 4,
        "slots_per_node": None,
        "rebalance_threshold": None,
        "rebalance_target": 1.05,
        "node_capacity_tokens_s": None,
    }
    assert body["bounds"]["slots_per_node"] == [5, 5]
    # each node's experts, per layer, are what the nodes themselves hold
    hosted = [layer.backend.hosted() for layer in service.placed]
    for node in body["node_load"]:
        assert node["experts"] == [layer[node["node"]] for layer in hosted]
    # the load per node is the batch's routed tokens, counted by the nodes
    served = [sum(int(layer.node_tokens[n]) for layer in service.placed) for n in range(2)]
    assert [n["served_tokens"] for n in body["node_load"]] == served and sum(served) > 0
    assert [n["window_tokens"] for n in body["node_load"]] == served  # first window
    assert [layer["window_tokens"] for layer in body["layers"]] == [
        int(layer.window()[1].sum()) for layer in service.placed
    ]
    # the decisions log: the start, with its reason and moves
    (start,) = body["decisions"]
    assert start["version"] == 1 and start["reason"] == "start: no traffic"
    assert start["nodes"] == 2 and start["moves"] == sum(r["moves"] for r in start["report"])


def test_admin_adds_removes_and_rebalances_nodes_and_answers_stay_the_same(
    placed: Admin,
) -> None:
    service, http = placed.service, placed.client
    before = _serve_batch(service)  # traffic to place from
    grown = http.post(REBALANCE, json={"add": 1}, headers=placed.admin)
    assert grown.status_code == 200, grown.text
    answer = grown.json()
    assert answer["stored"] is True and answer["nodes"] == 3 == service.nodes
    decision = answer["decision"]
    assert decision["version"] == 2 == service.placement_version and decision["nodes"] == 3
    assert "1 node(s) added" in decision["reason"]
    assert 0 < decision["moves"] <= decision["scratch_moves"]
    assert [p.cluster.nodes for p in service.placements] == [3] * len(service.placed)
    assert _serve_batch(service) == before  # the same answers on three nodes

    shrunk = http.post(REBALANCE, json={"remove": [0]}, headers=placed.admin).json()
    assert shrunk["stored"] is True and shrunk["nodes"] == 2
    assert shrunk["decision"]["removed"] == [0] and shrunk["decision"]["version"] == 3
    assert _serve_batch(service) == before

    view = http.get(PLACEMENT, params={"decisions": 2}, headers=placed.admin).json()
    assert [d["version"] for d in view["decisions"]] == [3, 2]  # newest first, as asked
    assert view["version"] == 3 and view["nodes"] == 2
    hosted = [layer.backend.hosted() for layer in service.placed]
    assert [n["experts"] for n in view["node_load"]] == [
        [layer[n] for layer in hosted] for n in range(2)
    ]


def test_a_capsule_key_or_no_key_is_refused_on_both_routes(placed: Admin) -> None:
    http = placed.client
    for method, path, body in (("GET", PLACEMENT, None), ("POST", REBALANCE, {"add": 1})):
        _refused(http.request(method, path, json=body, headers=placed.tenant), 403, "authorization")
        _refused(http.request(method, path, json=body), 401, "authorization")
    assert placed.service.nodes == 2 and placed.service.placement_version == 1  # unchanged


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"add": -1}, "add"),
        ({"remove": [7]}, "remove"),  # no node 7 on 2 nodes
        ({"remove": [-1]}, "remove[0]"),
        ({"add": 1, "remove": [1, 1]}, "remove"),
        ({"remove": [0]}, "remove"),  # 1 node left, below min_nodes 2
        ({"add": 3}, "add"),  # 5 nodes, above max_nodes 4
        ({"add": 1, "layers": [9]}, "layers"),
        ({"add": 1, "nodes": 3}, "nodes"),  # not a field of the body
        ({"add": "two"}, "add"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_changes_nothing(
    placed: Admin, body: dict[str, object], field: str
) -> None:
    _refused(placed.client.post(REBALANCE, json=body, headers=placed.admin), 422, field)
    assert placed.service.nodes == 2 and placed.service.store.placement_version() == 1


def test_the_bounds_are_named_in_the_refusal(placed: Admin) -> None:
    http = placed.client
    below = http.post(REBALANCE, json={"remove": [0]}, headers=placed.admin).json()["error"]
    assert "below min_nodes (2)" in below["message"]
    above = http.post(REBALANCE, json={"add": 3}, headers=placed.admin).json()["error"]
    assert "above max_nodes (4)" in above["message"]
    _refused(http.get(PLACEMENT, params={"decisions": 0}, headers=placed.admin), 422, "decisions")
    unread = http.post(
        REBALANCE,
        content=b"{not json",
        headers=placed.admin | {"Content-Type": "application/json"},
    )
    _refused(unread, 400, "body")


def test_nothing_to_place_from_is_409_yet_a_node_can_be_added(placed: Admin) -> None:
    # No traffic recorded: a plain rebalance has nothing to place from ...
    _refused(placed.client.post(REBALANCE, json={}, headers=placed.admin), 409, "loads")
    # ... while adding a node places every expert at equal weight.
    grown = placed.client.post(REBALANCE, json={"add": 1}, headers=placed.admin).json()
    assert grown["stored"] is True and grown["nodes"] == 3
    assert all(r["loads_from"] == "none" for r in grown["decision"]["report"])


def test_a_server_running_the_experts_in_the_model(shipped: DiffusionLM, tmp_path: Path) -> None:
    for served in _served(shipped, tmp_path):
        view = served.client.get(PLACEMENT, headers=served.admin).json()
        assert view["placed"] is False and view["nodes"] == 0 and view["node_load"] == []
        assert view["layers"] == [] and view["decisions"] == []
        _refused(served.client.post(REBALANCE, json={}, headers=served.admin), 409, "expert_nodes")
