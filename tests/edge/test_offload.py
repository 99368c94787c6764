"""The offload policy on snapshots of nodes (no I/O)."""

from __future__ import annotations

from trifecta.edge.node import NodePlace
from trifecta.edge.offload import NodeView, decide
from trifecta.fleet.capsules import Capsule

EU = NodePlace(name="edge-eu", kind="edge", jurisdiction="eu")
US = NodePlace(name="edge-us", kind="edge", jurisdiction="us")
TWIN = Capsule(id="plant-7", name="Plant 7", kind="digital_twin", domain="factory")
SOVEREIGN_EU = Capsule(id="gov-eu", name="Gov", kind="sovereign", domain="gov", jurisdiction="eu")
CLOUD_ONLY = Capsule(
    id="cloud", name="Cloud", kind="digital_twin", domain="x", allowed_environments=["inference"]
)


def node(
    key: str,
    place: NodePlace = EU,
    *,
    healthy: bool = True,
    current: bool = True,
    in_flight: int = 0,
    capacity: int = 2,
) -> NodeView:
    return NodeView(key, place, healthy, current, in_flight, capacity)


def test_light_request_goes_to_the_least_loaded_node() -> None:
    decision = decide(
        TWIN, ["41+17?"], [node("a", in_flight=1), node("b", US), node("c", in_flight=2)]
    )
    assert decision.offload and decision.reason == "offloaded"
    assert decision.candidates == ("b", "a")  # c is full


def test_heavy_or_foreign_prompts_stay_in_the_cloud() -> None:
    nodes = [node("a")]
    assert decide(TWIN, ["t=41,p=17,r=63;t+r?"], nodes).reason == "not_light"
    assert decide(TWIN, ["41+17?", "41+17-23?"], nodes).reason == "not_light"  # a batch goes whole
    assert decide(TWIN, ["what is the weather?"], nodes).reason == "not_light"
    assert decide(TWIN, [], nodes).reason == "not_light"


def test_sovereignty_decides_which_nodes_count() -> None:
    nodes = [node("us-1", US), node("eu-1", EU)]
    assert decide(SOVEREIGN_EU, ["1+2?"], nodes).candidates == ("eu-1",)
    assert decide(SOVEREIGN_EU, ["1+2?"], [node("us-1", US)]).reason == "no_allowed_node"
    assert decide(CLOUD_ONLY, ["1+2?"], nodes).reason == "no_allowed_node"
    # the capsule would allow the node, but the node is down or serves a stale model
    assert decide(SOVEREIGN_EU, ["1+2?"], [node("eu-1", healthy=False)]).reason == "no_healthy_node"
    assert decide(SOVEREIGN_EU, ["1+2?"], [node("eu-1", current=False)]).reason == "no_healthy_node"


def test_full_nodes_mean_no_capacity() -> None:
    assert (
        decide(TWIN, ["1+2?"], [node("a", in_flight=2), node("b", in_flight=3)]).reason
        == "no_capacity"
    )
    assert decide(None, ["1+2?"], []).reason == "no_allowed_node"


def test_grades_the_edge_model_is_weak_at_stay_in_the_cloud() -> None:
    accuracy = {1: 0.4, 2: 0.98}
    nodes = [node("a")]
    assert decide(TWIN, ["41+17?"], nodes, accuracy).offload  # 98% >= the default target 90%
    below = decide(TWIN, ["t=4,p=17,r=63;p?"], nodes, accuracy)
    assert below.reason == "below_quality" and "grade 1" in below.detail
    lenient = TWIN.model_copy(update={"quality_target": 0.3})
    assert decide(lenient, ["t=4,p=17,r=63;p?"], nodes, accuracy).offload
    assert decide(None, ["t=4,p=17,r=63;p?"], nodes, accuracy).offload  # no capsule: no target
    assert decide(TWIN, ["t=4,p=17,r=63;p?"], nodes, {}).offload  # quality unknown: not gated
