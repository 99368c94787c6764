"""Capsule URIs and manifests: parsing that names the bad part, resolution in the local
registry (scoped by the environment the authority names) and through peers' agent cards
served over loopback, and `trifecta capsule resolve / manifest` with exit code 2 on bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.federation.a2a_peer import CAPSULES, peer_app, serving, solver
from tests.support import run_cli as run
from trifecta.core.errors import InvalidInput, NotFound
from trifecta.fleet.capsule_uri import CapsuleResolver, CapsuleURI, CardCatalog, parse_capsule_uri
from trifecta.fleet.manifest import manifest_of, parse_manifest, version_matches
from trifecta.fleet.registry import CapsuleRegistry
from trifecta.fleet.topology import load_topology

TOPOLOGY = load_topology()


def test_a_good_uri_parses_and_prints_back() -> None:
    uri = parse_capsule_uri("capsule://Sovereign/sov-eu-grid/task/v1.2")
    assert uri == CapsuleURI(
        authority="sovereign", domain="sov-eu-grid", operation="task", version="v1.2"
    )
    assert str(uri) == "capsule://sovereign/sov-eu-grid/task/v1.2"
    assert parse_capsule_uri("capsule://10.0.0.2:8000/energy/search/").version is None


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("http://local/energy/task", "uri.scheme"),
        ("capsule:/energy/task", "uri.authority"),
        ("capsule://bad_host!/energy/task", "uri.authority"),
        ("capsule://user@local/energy/task", "uri.authority"),
        ("capsule://local/energy", "uri.path"),
        ("capsule://local/energy/task/1/extra", "uri.path"),
        ("capsule://local/Energy!/task", "uri.domain"),
        ("capsule://local/energy/train", "uri.operation"),
        ("capsule://local/energy/task/latest", "uri.version"),
        ("capsule://local/energy/task?x=1", "uri.query"),
        ("capsule://local/energy/task#top", "uri.fragment"),
    ],
)
def test_a_bad_uri_names_its_bad_part(text: str, part: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_capsule_uri(text)
    assert caught.value.field == part


slug = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)


@given(
    authority=slug,
    domain=slug,
    operation=st.sampled_from(["task", "search", "feedback"]),
    version=st.none() | st.from_regex(r"v?[0-9]{1,3}(\.[0-9]{1,3}){0,2}", fullmatch=True),
)
def test_printing_and_parsing_round_trip(
    authority: str, domain: str, operation: str, version: str | None
) -> None:
    uri = CapsuleURI(authority=authority, domain=domain, operation=operation, version=version)
    assert parse_capsule_uri(str(uri)) == uri


def test_versions_select_by_prefix() -> None:
    assert version_matches("1", "1.4.2") and version_matches("v1.4", "1.4.2")
    assert not version_matches("1.5", "1.4.2") and not version_matches("2", "1.4.2")


def test_a_bad_manifest_names_the_field() -> None:
    good = manifest_of(CAPSULES[1]).model_dump(mode="json")
    assert parse_manifest(good).jurisdiction == "eu"
    changes: list[tuple[dict[str, object], str]] = [
        ({"operations": ["task", "train"]}, "manifest.operations"),
        ({"version": "one"}, "manifest.version"),
        ({"domain": "Bad Domain"}, "manifest.domain"),
        ({"colour": "red"}, "manifest.colour"),
    ]
    for change, field in changes:
        with pytest.raises(InvalidInput) as caught:
            parse_manifest({**good, **change})
        assert caught.value.field == field, change


@pytest.fixture
def registry(sqlite_url: str) -> CapsuleRegistry:
    from trifecta.core.db import get_engine

    registry = CapsuleRegistry(get_engine(sqlite_url))
    registry.add_many(CAPSULES)
    return registry


def test_local_resolution_is_scoped_by_the_environment_named(registry: CapsuleRegistry) -> None:
    local = {"local": None, **{e.name: e for e in TOPOLOGY.environments}}
    resolver = CapsuleResolver(registry, local=local)
    assert resolver.resolve("capsule://local/energy/task").capsule_id == "twin-1"
    found = resolver.resolve("capsule://sovereign/sov-eu-grid/search/1")
    assert (found.where, found.capsule_id, found.manifest.jurisdiction) == ("local", "gov-eu", "eu")
    with pytest.raises(NotFound) as caught:  # a sovereign capsule is not at the cloud
        resolver.resolve("capsule://inference/sov-eu-grid/task")
    assert caught.value.field == "uri.domain"
    with pytest.raises(NotFound):  # nor a twin at the site reserved for sovereign capsules
        resolver.resolve("capsule://sovereign/energy/task")
    with pytest.raises(NotFound):  # no manifest of version 2
        resolver.resolve("capsule://local/energy/task/2")
    with pytest.raises(NotFound) as caught:
        resolver.resolve("capsule://elsewhere/energy/task")
    assert caught.value.field == "uri.authority" and "sovereign" in (caught.value.allowed or [])


@pytest.fixture(scope="module")
def peer_url() -> Iterator[str]:
    env = TOPOLOGY.environment("sovereign")
    with serving(lambda base: peer_app(env, base, solver(env.name))) as (url, _server):
        yield url


@pytest.mark.integration
def test_remote_resolution_through_a_peer_card(registry: CapsuleRegistry, peer_url: str) -> None:
    catalog = CardCatalog([peer_url, "http://127.0.0.1:9"], timeout_s=1.0)
    assert list(catalog.unreachable) == ["http://127.0.0.1:9"]
    resolver = CapsuleResolver(registry, catalog)
    for authority in ("sovereign", peer_url.removeprefix("http://")):
        found = resolver.resolve(f"capsule://{authority}/sov-eu-grid/task")
        assert (found.where, found.peer, found.url, found.capsule_id) == (
            "peer",
            "sovereign",
            peer_url,
            "gov-eu",
        )
    with pytest.raises(NotFound):  # the sovereign site publishes no twin
        resolver.resolve("capsule://sovereign/energy/task")


@pytest.mark.integration
def test_the_resolve_and_manifest_commands(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, peer_url: str
) -> None:
    assert run(["capsule", "add", "--id", "twin-1", "--domain", "energy"], capsys)[0] == 0
    code, out, _ = run(["capsule", "resolve", "capsule://local/energy/task", "--json"], capsys)
    assert code == 0 and json.loads(out)["capsule_id"] == "twin-1"
    # `sovereign` names an environment of the local topology (local first), so the peer is
    # addressed by its host:port
    authority = peer_url.removeprefix("http://")
    code, out, _ = run(
        ["capsule", "resolve", f"capsule://{authority}/sov-eu-grid/task", "--peer", peer_url],
        capsys,
    )
    assert code == 0, out
    assert "gov-eu" in out and peer_url in out.replace("\n", "")
    code, _, err = run(["capsule", "resolve", "capsule://local/energy/task/x.y"], capsys)
    assert code == 2 and "error: uri.version:" in err
    code, out, _ = run(["capsule", "manifest", "twin-1"], capsys)
    assert code == 0 and "operations:" in out and "domain: energy" in out
    bad = tmp_path / "manifest.yaml"
    bad.write_text("capsule_id: x\nname: X\ndomain: energy\noperations: [fly]\n")
    code, _, err = run(["capsule", "manifest", "--check", str(bad)], capsys)
    assert code == 2 and "error: manifest.operations:" in err
