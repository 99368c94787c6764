from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import (
    DIFFICULTIES,
    KINDS,
    TaskFamilyVerifier,
    estimate_difficulty,
    generate_tasks,
    is_light,
    make_task,
    normalize_answer,
    solve,
    split_of,
)
from trifecta.core.tokenizer import CharTokenizer


@pytest.mark.parametrize(
    ("prompt", "answer", "grade"),
    [
        ("t=41,p=17,r=63;p?", "17", 1),
        ("41+17?", "58", 2),
        ("t=41,p=17,r=63;t+r?", "104", 3),
        ("41+17-23?", "35", 4),
        ("t=41,p=17,r=63,s=5;t+r-p?", "87", 5),
        ("12-45+3?", "-30", 4),
    ],
)
def test_solve_and_grade_hand_examples(prompt: str, answer: str, grade: int) -> None:
    assert solve(prompt) == answer
    assert estimate_difficulty(prompt) == grade
    assert make_task(prompt).kind == KINDS[grade]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("t=1;q?", "not in the telemetry"), ("hello", "not a task"), ("t=1,t=2;t?", "given twice")],
)
def test_malformed_prompts_name_the_field(prompt: str, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        solve(prompt)
    assert err.value.field == "prompt" and message in err.value.message


def test_generation_is_seeded_and_graded() -> None:
    a = generate_tasks(200, seed=7)
    assert a == generate_tasks(200, seed=7)
    assert a != generate_tasks(200, seed=8)
    assert {t.difficulty for t in a} == set(DIFFICULTIES)
    for task in a:
        assert estimate_difficulty(task.prompt) == task.difficulty
        assert task.light == is_light(task.prompt) == (task.difficulty <= 2)


def test_heldout_split_is_disjoint_from_training() -> None:
    train = {t.prompt for t in generate_tasks(20_000, seed=1, split="train")}
    heldout = {t.prompt for t in generate_tasks(2_000, seed=1, split="heldout")}
    assert not train & heldout
    assert all(split_of(p) == "heldout" for p in heldout)


def test_short_telemetry_curriculum_stays_in_the_family_and_split() -> None:
    tasks = generate_tasks(600, seed=5, difficulties=[1, 3, 5], short_telemetry=True)
    sizes: dict[int, set[int]] = {t.difficulty: set() for t in tasks}
    for task in tasks:
        assert solve(task.prompt) == task.answer and split_of(task.prompt) == "train"
        assert estimate_difficulty(task.prompt) == task.difficulty
        sizes[task.difficulty].add(task.prompt.split(";")[0].count("="))
    # From only the sensors asked about up to the usual count.
    assert sizes == {1: {1, 2, 3, 4}, 3: {2, 3, 4}, 5: {3, 4, 5}}
    # The usual stream is unchanged by the option's existence.
    assert generate_tasks(50, seed=5) == generate_tasks(50, seed=5, short_telemetry=False)


def test_domain_flavours_the_sensors() -> None:
    tasks = generate_tasks(100, seed=3, difficulties=[1], domain="energy")
    letters = {ch for t in tasks for ch in t.prompt.split(";")[0] if ch.isalpha()}
    assert len(letters) <= 8


@given(st.integers(0, 10_000), st.sampled_from(DIFFICULTIES))
def test_verifier_accepts_the_answer_and_rejects_others(seed: int, grade: int) -> None:
    task = generate_tasks(1, seed=seed, difficulties=[grade])[0]
    verifier = TaskFamilyVerifier()
    assert verifier.verify(task.prompt, f" {task.answer}\nrest")
    assert not verifier.verify(task.prompt, str(int(task.answer) + 1))
    assert not verifier.verify(task.prompt, "no number")
    assert verifier.verify("not a task", "1") is None


def test_normalize_answer() -> None:
    assert normalize_answer(" 058<eos>") == "58"
    assert normalize_answer("-7?") == "-7"
    assert normalize_answer("x") is None


def test_tokenizer_round_trip_and_refusal() -> None:
    tok = CharTokenizer()
    for task in generate_tasks(50, seed=0):
        text = task.prompt + task.answer
        assert tok.decode(tok.encode(text, bos=True, eos=True)) == text
    with pytest.raises(InvalidInput):
        tok.encode("T=1?")
