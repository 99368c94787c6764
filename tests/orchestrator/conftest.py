"""A real stack (shipped tiers, context shards, in-process edge mesh) per test module: bringing
one up takes seconds, so the tests of a module share it and use capsules of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from trifecta.context.facade import ContextService
from trifecta.core import db
from trifecta.core.settings import Settings
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import Topology
from trifecta.orchestrator.stack import Stack


class StackFactory(Protocol):
    """A stack of its own data directory: these capsules (else the shipped fleet) on this
    topology (else the shipped one)."""

    def __call__(
        self, capsules: list[Capsule] | None = None, topology: Topology | None = None
    ) -> Stack: ...


@pytest.fixture(scope="module")
def make_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    made: list[Stack] = []

    def make(capsules: list[Capsule] | None = None, topology: Topology | None = None) -> Stack:
        data = Path(tmp_path_factory.mktemp("stack"))
        settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'control.db'}")
        stack = Stack(settings=settings, capsules=capsules, topology=topology)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.close()
    db.dispose_engines()


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> Stack:
    """The embedded default: the shipped fleet and topology."""
    built = make_stack()
    built.warm_up()
    return built


@pytest.fixture(scope="module")
def context(stack: Stack) -> ContextService:
    """The default stack's context service: the embedded stack hosts it in this process."""
    assert stack.context is not None, "the embedded stack runs no context service"
    return stack.context
