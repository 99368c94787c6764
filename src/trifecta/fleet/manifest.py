"""A capsule's manifest: what a federation member publishes about a capsule it homes, so that
a `capsule://` URI can be resolved to it (locally from the registry, remotely from a peer's
agent card).

A manifest is derived from a registry capsule (`manifest_of`) or read from a YAML/JSON file
(`load_manifest`); either way it is validated by `CapsuleManifest`, and a bad one names the
field (HTTP 422, CLI exit 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trifecta.core.errors import InvalidInput
from trifecta.fleet.assets import invalid_from, read_document
from trifecta.fleet.capsules import SLUG, Capsule

#: What any capsule of the trifecta can be asked: run a task through the loop, search its
#: domain's context (playbook and memories), and give feedback on an earlier task.
CAPSULE_OPERATIONS = ("feedback", "search", "task")
#: `1`, `1.2`, `1.2.3`, optionally with a leading `v` (`v2`).
VERSION = r"^v?\d{1,6}(\.\d{1,6}){0,2}$"
DEFAULT_VERSION = "1.0.0"
#: The agent-card extension in which an environment publishes itself and the manifests of
#: the capsules it homes (`federation.a2a.cards` writes it; `manifests_in_card` reads it).
ENVIRONMENT_EXTENSION = "urn:trifecta:a2a:environment:1"


def version_key(version: str) -> tuple[int, int, int]:
    """`v1.2` -> (1, 2, 0): versions compare numerically, missing parts are 0."""
    parts = [int(p) for p in version.removeprefix("v").split(".")]
    major, minor, patch = [*parts, 0, 0][:3]
    return (major, minor, patch)


def version_matches(wanted: str, offered: str) -> bool:
    """A URI's version selects every manifest version it is a prefix of: `1` matches
    `1.4.2`, `1.4` matches `1.4.2`, `1.4.2` only itself."""
    want = [int(p) for p in wanted.removeprefix("v").split(".")]
    return list(version_key(offered))[: len(want)] == want


class CapsuleManifest(BaseModel):
    """Name, version, domain, jurisdiction, allowed places and operations of one capsule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    capsule_id: str = Field(pattern=SLUG)
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(default=DEFAULT_VERSION, pattern=VERSION)
    domain: str = Field(pattern=SLUG)
    kind: str = Field(default="digital_twin", pattern=SLUG)
    jurisdiction: str | None = Field(default=None, pattern=SLUG)
    allowed_places: list[str] | None = Field(
        default=None, description="environment names or kinds; None: any"
    )
    operations: list[str] = Field(default_factory=lambda: list(CAPSULE_OPERATIONS), min_length=1)

    @field_validator("operations")
    @classmethod
    def _operations(cls, value: list[str]) -> list[str]:
        for operation in value:
            if operation not in CAPSULE_OPERATIONS:
                raise ValueError(
                    f"unknown operation {operation!r} (allowed: {', '.join(CAPSULE_OPERATIONS)})"
                )
        return sorted(set(value))

    @field_validator("allowed_places")
    @classmethod
    def _places(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for place in value:
                if not place or len(place) > 63:
                    raise ValueError(f"bad place {place!r}: a name or kind of an environment")
        return sorted(set(value)) if value is not None else None

    def offers(self, operation: str, version: str | None) -> bool:
        return operation in self.operations and (
            version is None or version_matches(version, self.version)
        )


def manifest_of(capsule: Capsule, *, version: str = DEFAULT_VERSION) -> CapsuleManifest:
    """The manifest of a registry capsule: every operation of the trifecta."""
    return CapsuleManifest(
        capsule_id=capsule.id,
        name=capsule.name,
        version=version,
        domain=capsule.domain,
        kind=capsule.kind,
        jurisdiction=capsule.jurisdiction,
        allowed_places=capsule.allowed_environments,
    )


def parse_manifest(data: object, *, source: str = "manifest") -> CapsuleManifest:
    if not isinstance(data, dict):
        raise InvalidInput("a manifest is a mapping of fields", field=source)
    try:
        return CapsuleManifest.model_validate(data)
    except ValidationError as exc:
        raise invalid_from(exc, prefix=source) from None


def card_extension(card: Mapping[str, Any]) -> dict[str, Any]:
    """The environment extension's params in an agent card's JSON (protocol 1.0 field
    names), or `InvalidInput` naming the card."""
    extensions = (card.get("capabilities") or {}).get("extensions") or []
    for extension in extensions:
        if isinstance(extension, dict) and extension.get("uri") == ENVIRONMENT_EXTENSION:
            params = extension.get("params") or {}
            return dict(params) if isinstance(params, dict) else {}
    raise InvalidInput(
        f"card {card.get('name')!r} carries no {ENVIRONMENT_EXTENSION} extension", field="card"
    )


def manifests_in_card(card: Mapping[str, Any]) -> list[CapsuleManifest]:
    """The capsule manifests an agent card publishes (none when it lists none)."""
    listed = card_extension(card).get("capsules") or []
    if not isinstance(listed, list):
        raise InvalidInput("must be a list of manifests", field="card.capsules")
    return [parse_manifest(item, source=f"card.capsules[{i}]") for i, item in enumerate(listed)]


def load_manifest(path: Path) -> CapsuleManifest:
    """A manifest from a YAML or JSON file, with errors naming the field."""
    return parse_manifest(read_document(Path(path), field="manifest"))
