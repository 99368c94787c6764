"""Rule queries against a capsule's program, for the product loop.

A query the Boolean program settles (nothing it depends on is learnable) is answered
symbolically and exactly: what an edge node does. A query that depends on a tensor the
capsule marked `learnable` (facts known to be incomplete) is answered in embedding mode:
the learnable tensors fitted from the program's examples when it has any, read through the
object embeddings otherwise, with the temperature sigmoid; every answer carries its value,
and the answer a confidence (how far the values sit from 1/2, see `RuleAnswer`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from trifecta.tensorlogic.engine import Result, evaluate
from trifecta.tensorlogic.learn import Params, fit
from trifecta.tensorlogic.program import Atom, Program, parse_query


class RuleQuery(BaseModel):
    query: str = Field(..., min_length=3, max_length=1000, description="e.g. `Downstream[v1, p3]?`")
    limit: int = Field(100, ge=1, le=10_000, description="most answers returned")


class Binding(BaseModel):
    symbols: dict[str, str]  # variable -> symbol
    value: float


class RuleAnswer(BaseModel):
    query: str
    mode: Literal["symbolic", "embedding"]
    exact: bool
    holds: bool | None = Field(None, description="for a query without variables")
    # symbolic: 1. embedding: the mean over the queried entries of max(v, 1 - v), i.e. how
    # decided the soft answers are (1/2 = no better than a coin).
    confidence: float
    answers: list[Binding]
    reason: str


def dependencies(program: Program, tensor: str) -> set[str]:
    """Every tensor whose value `tensor`'s value is computed from (itself included)."""
    seen, todo = {tensor}, [tensor]
    while todo:
        name = todo.pop()
        for eq in program.equations:
            if eq.lhs == name:
                for atom in eq.body:
                    if atom.tensor not in seen:
                        seen.add(atom.tensor)
                        todo.append(atom.tensor)
    return seen


class RuleService:
    """Answers rule queries against one program; results are computed once and reused."""

    def __init__(
        self,
        program: Program,
        *,
        temperature: float = 0.1,
        embed_dim: int = 32,
        seed: int = 0,
        fit_steps: int = 300,
    ):
        self.program = program
        self.temperature = temperature
        self.embed_dim = embed_dim
        self.seed = seed
        self.fit_steps = fit_steps
        self._symbolic: Result | None = None
        self._embedding: Result | None = None

    def _learned(self) -> Params | None:
        learnable = [n for n, t in self.program.tensors.items() if t.learnable]
        if not learnable or not self.program.examples:
            return None
        return fit(self.program, steps=self.fit_steps, seed=self.seed).params

    def symbolic(self) -> Result:
        if self._symbolic is None:
            self._symbolic = evaluate(self.program)
        return self._symbolic

    def embedding(self) -> Result:
        if self._embedding is None:
            self._embedding = evaluate(
                self.program,
                mode="embedding",
                temperature=self.temperature,
                embed_dim=self.embed_dim,
                seed=self.seed,
                params=self._learned(),
            )
        return self._embedding

    def answer(self, query: RuleQuery) -> RuleAnswer:
        atom = parse_query(self.program, query.query)
        uncertain = sorted(
            n for n in dependencies(self.program, atom.tensor) if self.program.tensors[n].learnable
        )
        if not uncertain:
            return self._answer(query, atom, self.symbolic(), "symbolic", "settled by the rules")
        reason = f"depends on learnable {', '.join(uncertain)}: answered in embedding mode"
        return self._answer(query, atom, self.embedding(), "embedding", reason)

    def _answer(
        self,
        query: RuleQuery,
        atom: Atom,
        result: Result,
        mode: Literal["symbolic", "embedding"],
        reason: str,
    ) -> RuleAnswer:
        variables = atom.variables
        if mode == "symbolic":
            rows = result.answers(atom, limit=query.limit)
            confidence = 1.0
        else:
            every = result.answers(atom)
            rows = [r for r in every if r[1] > 0.5][: query.limit]
            values = np.array([v for _, v in every]) if every else np.zeros(0)
            # entries absent from `every` are exact zeros: fully decided
            total = int(
                np.prod(
                    [
                        self.program.domains[self.program.tensors[atom.tensor].domains[i]].size
                        for i, a in enumerate(atom.args)
                        if isinstance(a, str)
                    ]
                )
            )
            decided = float(np.maximum(values, 1 - values).sum()) + (total - len(values))
            confidence = decided / max(total, 1)
        holds = None
        if not variables:
            value = result.value(atom)
            holds = value > 0.5 if mode == "embedding" else value > 0
            if mode == "embedding":
                confidence = max(value, 1 - value)
        answers = [Binding(symbols=dict(zip(variables, s, strict=True)), value=v) for s, v in rows]
        return RuleAnswer(
            query=query.query,
            mode=mode,
            exact=mode == "symbolic",
            holds=holds,
            confidence=confidence,
            answers=answers,
            reason=reason,
        )
