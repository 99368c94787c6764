"""Worked answers: what the tiers are trained to write, intermediate steps first.

Two styles, one per tier (`TierSpec.scratchpad`):

- `operands` (medium, large): the operands are written out, look-ups resolved, and each step
  is one signed sum of two numbers that sit side by side: `t=41,p=17,r=63;t+r?` ->
  `41+63=104`, `t=41,p=17,r=63,s=5;t+r-p?` -> `41+63=104-17=87`, `41+17-23?` -> `41+17=58-23=35`;
- `results` (small): only the running results of three or more terms: `104=87`, `58=35`.

A prompt of plain numbers and at most two terms is answered directly in both (`41+17?` ->
`58`), as is a single look-up (`p?` -> `17`). The verifier reads the final answer after the
last `=` (`core.tasks.normalize_answer`).

A small transformer answering `t+r-p?` in one go must find three values and carry through two
signed sums inside one forward pass. Written out (a scratchpad, after Nye et al., 2021, "Show
Your Work", arXiv:2112.00114), each step is a skill it masters alone: a look-up is a copy of
the digits after the asked sensor, and a sum of two adjacent numbers is the plain grade-2 task.
Measured on the small tier (`results` style, docs/cognitive.md): look-ups 99% and sums 100%,
but look-up sums answered in one go only 27.5%.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Literal

from trifecta.core.tasks import estimate_difficulty, signed_values

Style = Literal["operands", "results", "named"]
STYLES: tuple[Style, ...] = ("operands", "results", "named")
# Tokens a complete worked answer of the family takes: at most 20 characters
# (`a10-b99=-89-c99=-188`, `named`), then the end token.
ANSWER_TOKENS = 21
_TERMS = re.compile(r"[a-z]|\d+")
STEP = "="  # ends each step of a worked answer; the text after the last one is the answer


def worked_answer(prompt: str, style: Style = "operands") -> str:
    """The completion a tier is trained to write for `prompt` (a task of the family)."""
    values = signed_values(prompt)
    partials = list(accumulate(values))
    if len(values) == 1 or (len(values) == 2 and estimate_difficulty(prompt) == 2):
        return str(partials[-1])
    if style == "results":
        if len(values) == 2:
            return str(partials[-1])
        return STEP.join(str(value) for value in partials[1:])
    names = _term_names(prompt) if style == "named" else [""] * len(values)
    text = names[0] + str(values[0])
    for name, value, partial in zip(names[1:], values[1:], partials[1:], strict=True):
        text += f"{'-' if value < 0 else '+'}{name}{abs(value)}{STEP}{partial}"
    return text


def _term_names(prompt: str) -> list[str]:
    """Each term's sensor name, or "" for a number (`'t=41,p=17;t-p+3?'` -> `['t', 'p', '']`)."""
    question = prompt.rsplit(";", 1)[-1].rstrip("?")
    return [term if term.isalpha() else "" for term in _TERMS.findall(question)]


def steps_of(text: str) -> list[str]:
    """The parts of a worked answer between its `=` (`'41+63=104-17=87'` ->
    `['41+63', '104-17', '87']`); the last is the answer."""
    return text.split(STEP)
