"""Worked answers: what the tiers write, and the verifier reading the final answer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trifecta.cognitive.scratchpad import ANSWER_TOKENS, steps_of, worked_answer
from trifecta.core.tasks import DIFFICULTIES, TaskFamilyVerifier, generate_tasks, normalize_answer


@pytest.mark.parametrize(
    ("prompt", "worked"),
    [
        ("t=41,p=17,r=63;p?", "17"),
        ("41+17?", "58"),
        ("t=41,p=17,r=63;t+r?", "104"),
        ("41+17-23?", "58=35"),
        ("t=41,p=17,r=63,s=5;t+r-p?", "104=87"),
        ("3-99-99?", "-96=-195"),
        ("1+2+3+4?", "3=6=10"),
    ],
)
def test_worked_answers_by_hand(prompt: str, worked: str) -> None:
    assert worked_answer(prompt) == worked
    assert TaskFamilyVerifier().verify(prompt, worked) is True


@given(st.integers(0, 10_000), st.sampled_from(DIFFICULTIES))
def test_every_worked_answer_is_right_and_fits_the_budget(seed: int, grade: int) -> None:
    (task,) = generate_tasks(1, seed=seed, difficulties=[grade])
    worked = worked_answer(task.prompt)
    assert normalize_answer(worked) == task.answer
    assert len(worked) + 1 <= ANSWER_TOKENS  # characters, then the end token
    assert len(steps_of(worked)) == (2 if grade in (4, 5) else 1)


def test_the_verifier_reads_the_final_step() -> None:
    verifier = TaskFamilyVerifier()
    assert verifier.verify("41+17-23?", "58=35") is True
    assert verifier.verify("41+17-23?", "35=58") is False  # the last step is the answer
    assert verifier.verify("41+17-23?", "58=") is False  # cut before the answer
    assert verifier.verify("41+17-23?", " 35\n") is True  # a bare answer still reads
    assert verifier.verify("What is 7*6?", "42") is None  # outside the family: unverifiable
