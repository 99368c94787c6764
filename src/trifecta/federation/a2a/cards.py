"""An environment's A2A agent card (protocol 1.0), served at `/.well-known/agent-card.json`.

The card names one skill per service the environment hosts (cognitive, context, edge,
generative, tensorlogic) and carries the environment itself (kind, jurisdiction, reservation,
accelerators) in an agent extension, `ENVIRONMENT_EXTENSION`. A peer reads the environment
back with `card_environment` and applies the one placement rule, `Environment.admits`, to
it; the extension may also list the manifests of capsules the environment homes, which is how
`capsule://` URIs resolve across the federation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentExtension,
    AgentInterface,
    AgentProvider,
    AgentSkill,
)
from a2a.utils.constants import PROTOCOL_VERSION_1_0, TransportProtocol
from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError

from trifecta import __version__
from trifecta.core.errors import InvalidInput
from trifecta.fleet.manifest import (
    ENVIRONMENT_EXTENSION,
    CapsuleManifest,
    card_extension,
    manifests_in_card,
)
from trifecta.fleet.topology import Environment

Service = Literal["cognitive", "context", "edge", "generative", "tensorlogic"]
SERVICES: tuple[Service, ...] = ("cognitive", "context", "edge", "generative", "tensorlogic")
RPC_PATH = "/a2a"

_SKILLS: dict[Service, tuple[str, str]] = {
    "cognitive": ("Cognitive tiers", "UserLM tiers with entropy-driven escalation"),
    "context": ("Context", "ACE playbooks and ReasoningBank memories of the domains homed here"),
    "edge": ("Edge mesh", "BitNet b1.58 ternary models on the edge mesh's nodes"),
    "generative": ("Generative", "RND1-style masked-diffusion MoE with per-capsule experts"),
    "tensorlogic": ("Tensor Logic", "rule programs compiled to einsum"),
}


def default_services(environment: Environment) -> list[Service]:
    """What an environment of this kind hosts when nobody says otherwise: an edge site its
    mesh and Tensor Logic programs; a training pool nothing; any other serving site the
    cognitive tiers and the context shards."""
    if not environment.serving or environment.kind == "training":
        return []
    if environment.kind == "edge":
        return ["edge", "tensorlogic"]
    return ["cognitive", "context"]


def build_agent_card(
    environment: Environment,
    base_url: str,
    *,
    services: Sequence[Service] | None = None,
    manifests: Sequence[CapsuleManifest] = (),
) -> AgentCard:
    """The card of `environment`, whose server answers at `base_url` (A2A JSON-RPC at
    `base_url + RPC_PATH`). Prices stay out of the card: it is public."""
    hosted = list(default_services(environment) if services is None else services)
    for service in hosted:
        if service not in SERVICES:
            raise InvalidInput(f"unknown service {service!r}", field="services", allowed=SERVICES)
    place = [environment.kind, *([environment.jurisdiction] if environment.jurisdiction else [])]
    skills = [
        AgentSkill(
            id=service,
            name=_SKILLS[service][0],
            description=f"{_SKILLS[service][1]}; capsule tasks arrive as A2A tasks",
            tags=[service, *place],
            input_modes=["application/json", "text/plain"],
            output_modes=["application/json"],
        )
        for service in hosted
    ]
    extension = AgentExtension(
        uri=ENVIRONMENT_EXTENSION,
        description="the Trifecta environment this agent is: kind, jurisdiction, accelerators",
        required=False,
    )
    extension.params.update(
        {
            "environment": environment.model_dump(mode="json", exclude={"prices"}),
            "accelerators": environment.accelerators,
            "services": hosted,
            "capsules": [m.model_dump(mode="json") for m in manifests],
        }
    )
    jurisdiction = f", jurisdiction {environment.jurisdiction}" if environment.jurisdiction else ""
    return AgentCard(
        name=f"trifecta-{environment.name}",
        description=f"Trifecta environment {environment.name!r} ({environment.kind}"
        f"{jurisdiction}, {environment.provider} {environment.region})",
        version=__version__,
        provider=AgentProvider(organization="Trifecta", url=base_url.rstrip("/")),
        supported_interfaces=[
            AgentInterface(
                url=base_url.rstrip("/") + RPC_PATH,
                protocol_binding=TransportProtocol.JSONRPC.value,
                protocol_version=PROTOCOL_VERSION_1_0,
            )
        ],
        capabilities=AgentCapabilities(streaming=True, extensions=[extension]),
        default_input_modes=["application/json", "text/plain"],
        default_output_modes=["application/json"],
        skills=skills,
    )


def without_manifests(card: AgentCard) -> AgentCard:
    """The card as anyone may read it: the same environment and skills, no capsule manifests
    (which name tenants, their domains and jurisdictions: peers presenting the federation
    credential get them)."""
    public = AgentCard()
    public.CopyFrom(card)
    for extension in public.capabilities.extensions:
        if extension.uri == ENVIRONMENT_EXTENSION and "capsules" in extension.params:
            extension.params["capsules"] = []
    return public


def card_json(card: AgentCard) -> dict[str, Any]:
    """The card as served (protocol 1.0 JSON field names)."""
    return MessageToDict(card)


def _extension(card: AgentCard) -> dict[str, Any]:
    return card_extension(card_json(card))


def card_environment(card: AgentCard) -> Environment:
    """The environment a card describes (to apply `Environment.admits` to it)."""
    data = _extension(card).get("environment")
    try:
        return Environment.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"bad environment in card {card.name!r}: {exc}", field="card") from None


def card_services(card: AgentCard) -> list[str]:
    return [skill.id for skill in card.skills]


def card_manifests(card: AgentCard) -> list[CapsuleManifest]:
    return manifests_in_card(card_json(card))


def rpc_url(card: AgentCard) -> str:
    return card.supported_interfaces[0].url if card.supported_interfaces else ""
