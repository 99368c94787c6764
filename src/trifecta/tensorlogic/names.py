"""How an index name is read: a constant (a symbol of its position's domain) or a variable,
and the message when it is neither (with the nearest symbols, for a misspelling)."""

from __future__ import annotations

import difflib
import re
from typing import Protocol


class SymbolTable(Protocol):
    """What a message needs of a domain (`program.Domain` is one)."""

    name: str
    symbols: list[str]

    @property
    def size(self) -> int: ...


# The rule that tells a variable from a constant: a name that is a symbol of its position's
# domain is that constant; any other name must look like a variable, one to three lowercase
# letters (`x`, `u`, `who`), or it is an unknown symbol. Without the second half a misspelled
# constant (`Ancestor[anne, z]?`) would silently be read as a variable and match everything.
VARIABLE = re.compile(r"[a-z]{1,3}")
SUGGESTION_LIMIT = 10_000  # domains larger than this get no "did you mean" (a linear scan)


def is_variable_name(text: str) -> bool:
    return VARIABLE.fullmatch(text) is not None


def unknown_symbol(text: str, domain: SymbolTable, variable_allowed: bool) -> str:
    """The message for a name that is no symbol of `domain`: what the domain is, why the
    name is not read as a variable, and the nearest symbols when there are any."""
    message = f"{text!r} is not a symbol of domain {domain.name}"
    if domain.symbols == [str(i) for i in range(domain.size)]:
        message += f" (its symbols are 0 .. {domain.size - 1})"
    elif domain.size <= SUGGESTION_LIMIT:
        near = difflib.get_close_matches(text, domain.symbols, n=3, cutoff=0.6)
        if near:
            message += " (did you mean " + " or ".join(repr(s) for s in near) + "?)"
    if variable_allowed:
        message += "; a variable is 1 to 3 lowercase letters"
    return message
