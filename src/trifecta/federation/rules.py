"""Capsules' Tensor Logic programs on the request path: where a program comes from, how an
answer reads as text, and how the verifier checks it.

A capsule may own a program (`Capsule.program`, a shipped name such as `plant`: its digital
twin's knowledge). An edge site reads it from the artifact its mesh synced (content-addressed,
like the edge model) and answers rule queries symbolically; a cloud site answers the queries
the Boolean program cannot settle (they depend on a tensor the capsule marked learnable) in
embedding mode, with a confidence.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from trifecta.core.errors import NotFound
from trifecta.tensorlogic.assets import program_path
from trifecta.tensorlogic.program import compile_program, parse_query
from trifecta.tensorlogic.service import RuleAnswer, RuleQuery, RuleService, dependencies

RULE_QUERY = re.compile(r"^\s*[A-Z][A-Za-z0-9_]*\[[^\[\]]*\]\s*\?\s*$")
ProgramSource = Callable[[str], str]  # program name -> its text


def is_rule_query(prompt: str) -> bool:
    return RULE_QUERY.match(prompt) is not None


def shipped_program(name: str) -> str:
    return program_path(name).read_text()


class RuleBook:
    """Compiled programs by name, each behind one `RuleService` (results computed once)."""

    def __init__(self, source: ProgramSource = shipped_program):
        self.source = source
        self._services: dict[str, RuleService] = {}
        self._lock = threading.Lock()

    def service(self, name: str) -> RuleService:
        with self._lock:
            found = self._services.get(name)
            if found is None:
                program = compile_program(self.source(name), source=f"{name}.tl", load_files=False)
                found = self._services[name] = RuleService(program)
            return found

    def settles(self, name: str, query: str) -> bool:
        """Does the Boolean program settle `query` (nothing it depends on is learnable)?"""
        program = self.service(name).program
        atom = parse_query(program, query)
        return not any(program.tensors[n].learnable for n in dependencies(program, atom.tensor))

    def answer(self, name: str, query: str) -> RuleAnswer:
        return self.service(name).answer(RuleQuery(query=query))


def artifact_source(read: Callable[[str], bytes | None]) -> ProgramSource:
    """Programs read from an edge site's synced artifacts (`read(name)` -> the bytes)."""

    def source(name: str) -> str:
        data = read(name)
        if data is None:
            raise NotFound(f"program {name!r} has not been synced to this site", field="program")
        return data.decode()

    return source


def render(answer: RuleAnswer) -> str:
    """The answer as the text a client reads: `yes`/`no` for a ground query, else the bindings
    that hold, sorted (`press1,turbidity`; `a:b` when several variables)."""
    if answer.holds is not None:
        return "yes" if answer.holds else "no"
    rows = sorted(":".join(b.symbols[k] for k in sorted(b.symbols)) for b in answer.answers)
    return ",".join(rows) if rows else "none"


class RuleVerifier:
    """Checks a rule answer against the program's own Boolean evaluation: right or wrong when
    the rules settle the query, unverifiable (None) when it depends on learnable tensors."""

    def __init__(self, book: RuleBook | None = None):
        self.book = book or RuleBook()

    def verify(self, program: str, query: str, text: str) -> bool | None:
        truth = self.book.answer(program, query)
        if truth.mode != "symbolic":
            return None
        return text.strip() == render(truth)
