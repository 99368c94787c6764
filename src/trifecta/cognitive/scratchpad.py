"""Worked answers: what the tiers are trained to write, intermediate results first.

A prompt of three or more terms is answered with its running results, each step one sum
(`t=41,p=17,r=63,s=5;t+r-p?` -> `104=87`, `41+17-23?` -> `58=35`); the verifier reads the
final answer after the last `=` (`core.tasks.normalize_answer`). One or two terms are one
step and are answered directly (`t+r?` -> `104`).

A small transformer answering a three-term chain in one go must fetch three operands and carry
through two signed sums inside one forward pass; written out, each step is the two-operand
skill it learns first, applied to the result it has just written (a scratchpad, after Nye et
al., 2021, "Show Your Work", arXiv:2112.00114). The steps are results only, not operands
(`41+17=58-23=35`), so that every answer of the family fits in 8 tokens, the completion budget
the loop's requests carry by default.
"""

from __future__ import annotations

from itertools import accumulate

from trifecta.core.tasks import signed_values

# Tokens a complete worked answer of the family takes: at most 8 characters (`-99=-198`), then
# the end token.
ANSWER_TOKENS = 9
STEP = "="  # separates the steps of a worked answer; the last step is the answer


def worked_answer(prompt: str) -> str:
    """The completion a tier is trained to write for `prompt` (a task of the family)."""
    partials = list(accumulate(signed_values(prompt)))
    return (
        STEP.join(str(value) for value in partials[1:]) if len(partials) > 2 else str(partials[-1])
    )


def steps_of(text: str) -> list[str]:
    """The steps of a worked answer, in order (`'104=87'` -> `['104', '87']`)."""
    return text.split(STEP)
