"""Worked answers: what the tiers write, and the verifier reading the final answer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trifecta.cognitive.scratchpad import ANSWER_TOKENS, STYLES, Style, steps_of, worked_answer
from trifecta.core.tasks import DIFFICULTIES, TaskFamilyVerifier, generate_tasks, normalize_answer


@pytest.mark.parametrize(
    ("prompt", "operands", "results"),
    [
        ("t=41,p=17,r=63;p?", "17", "17"),
        ("41+17?", "58", "58"),
        ("t=41,p=17,r=63;t+r?", "41+63=104", "104"),
        ("41+17-23?", "41+17=58-23=35", "58=35"),
        ("t=41,p=17,r=63,s=5;t+r-p?", "41+63=104-17=87", "104=87"),
        ("3-99-99?", "3-99=-96-99=-195", "-96=-195"),
        ("1+2+3+4?", "1+2=3+3=6+4=10", "3=6=10"),
    ],
)
def test_worked_answers_by_hand(prompt: str, operands: str, results: str) -> None:
    assert worked_answer(prompt) == operands and worked_answer(prompt, "results") == results
    verifier = TaskFamilyVerifier()
    assert verifier.verify(prompt, operands) is True and verifier.verify(prompt, results) is True


@given(st.integers(0, 10_000), st.sampled_from(DIFFICULTIES), st.sampled_from(STYLES))
def test_every_worked_answer_is_right_and_fits_the_budget(
    seed: int, grade: int, style: Style
) -> None:
    (task,) = generate_tasks(1, seed=seed, difficulties=[grade])
    worked = worked_answer(task.prompt, style)
    assert normalize_answer(worked) == task.answer
    assert len(worked) + 1 <= ANSWER_TOKENS  # characters, then the end token
    operands = {1: 1, 2: 1, 3: 2, 4: 3, 5: 3}
    steps = {"operands": operands, "named": operands, "results": {1: 1, 2: 1, 3: 1, 4: 2, 5: 2}}
    assert len(steps_of(worked)) == steps[style][grade]


def test_the_verifier_reads_the_final_step() -> None:
    verifier = TaskFamilyVerifier()
    assert verifier.verify("41+17-23?", "41+17=58-23=35") is True
    assert verifier.verify("41+17-23?", "35=58") is False  # the last step is the answer
    assert verifier.verify("41+17-23?", "41+17=58-23=") is False  # cut before the answer
    assert verifier.verify("41+17-23?", " 35\n") is True  # a bare answer still reads
    assert verifier.verify("What is 7*6?", "42") is None  # outside the family: unverifiable


@pytest.mark.parametrize(
    ("prompt", "named"),
    [
        ("t=41,p=17,r=63;p?", "17"),
        ("41+17-23?", "41+17=58-23=35"),
        ("t=41,p=17,r=63;t+r?", "t41+r63=104"),
        ("t=41,p=17,r=63,s=5;t+r-p?", "t41+r63=104-p17=87"),
        ("a=10,b=99,c=99,d=1;a-b-c?", "a10-b99=-89-c99=-188"),
    ],
)
def test_named_answers_write_each_sensor_before_its_value(prompt: str, named: str) -> None:
    assert worked_answer(prompt, "named") == named
    assert TaskFamilyVerifier().verify(prompt, named) is True
    assert len(named) + 1 <= ANSWER_TOKENS
