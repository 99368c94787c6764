"""Dependency injection for package commands and apps.

A package never imports another layer, yet some of its commands need another layer's parts
(the context roles need the cognitive layer's language model). The composition roots
(`trifecta.cli`, `trifecta.serve`, `trifecta.orchestrator`) build a `Wiring` with factories
for those parts and hand it down: Typer commands read it from `ctx.obj`
(`Wiring.of(ctx)`), app factories take it as an argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trifecta.core.embeddings import get_embedder
from trifecta.core.protocols import Embedder, LanguageModel


def _no_language_model() -> LanguageModel | None:
    return None


@dataclass
class Wiring:
    # The configured language model for roles that write text (None: none configured).
    language_model: Callable[[], LanguageModel | None] = _no_language_model
    embedder: Callable[[], Embedder] = get_embedder
    extras: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def of(ctx: Any) -> Wiring:
        """The wiring the root command put on a Typer/Click context (a default one if none)."""
        found = ctx.find_object(Wiring) if ctx is not None else None
        return found if isinstance(found, Wiring) else Wiring()
