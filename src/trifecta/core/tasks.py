"""The synthetic, checkable task family every shipped model is trained and judged on.

Tasks are arithmetic and look-ups over a capsule's telemetry, in five grades of difficulty:

| grade | kind           | example prompt              | answer |
|-------|----------------|-----------------------------|--------|
| 1     | `lookup`       | `t=41,p=17,r=63;p?`         | `17`   |
| 2     | `add`          | `41+17?`                    | `58`   |
| 3     | `lookup_add`   | `t=41,p=17,r=63;t+r?`       | `104`  |
| 4     | `chain`        | `41+17-23?`                 | `35`   |
| 5     | `lookup_chain` | `t=41,p=17,r=63,s=5;t+r-p?` | `87`   |

A prompt carries everything needed to answer it, so the verifier solves the prompt itself
and needs no stored key: any prompt of this grammar can be checked, including ones a client
wrote. Grades 1-2 are "light" (the edge may serve them).

Generation is seeded. A prompt belongs to the held-out split when its hash falls in one
fifth of the hash space, so the training and held-out splits are disjoint by construction.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from trifecta.core.errors import InvalidInput

Split = Literal["train", "heldout"]
KINDS: dict[int, str] = {1: "lookup", 2: "add", 3: "lookup_add", 4: "chain", 5: "lookup_chain"}
DIFFICULTIES: tuple[int, ...] = tuple(KINDS)
LIGHT_MAX_DIFFICULTY = 2
MAX_OPERAND = 99
# The mix a capsule's traffic follows by default: mostly light look-ups, a tail of hard chains.
DEFAULT_MIX: dict[int, float] = {1: 0.30, 2: 0.25, 3: 0.20, 4: 0.15, 5: 0.10}

# Every character a prompt or answer can hold; the shipped models' vocabulary is built on it.
ALPHABET = string.digits + string.ascii_lowercase + "=,;+-?"

_TELEMETRY = re.compile(r"^(?P<telemetry>[a-z]=\d{1,3}(?:,[a-z]=\d{1,3})*);")
_EXPRESSION = re.compile(r"^(?P<first>[a-z]|\d{1,3})(?P<rest>(?:[+-](?:[a-z]|\d{1,3}))*)\?$")
_TERM = re.compile(r"([+-])([a-z]|\d{1,3})")
_ANSWER = re.compile(r"^\s*(-?\d+)")
# A worked answer (scratchpad) ends with its result after the last "=": `41+63=104-17=87`.
_FINAL_ANSWER = re.compile(r"=\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Task:
    id: str
    kind: str
    difficulty: int
    prompt: str
    answer: str
    domain: str | None = None

    @property
    def light(self) -> bool:
        return self.difficulty <= LIGHT_MAX_DIFFICULTY


def task_id(prompt: str) -> str:
    return "t-" + hashlib.blake2b(prompt.encode(), digest_size=6).hexdigest()


def split_of(prompt: str) -> Split:
    """Held-out when the prompt's hash lands in the first fifth of the hash space."""
    bucket = hashlib.blake2b(prompt.encode(), digest_size=4).digest()[0]
    return "heldout" if bucket < 256 // 5 else "train"


def domain_sensors(domain: str | None, count: int = 8) -> str:
    """The sensor letters a domain's telemetry uses (all 26 when no domain is given), so that
    capsules of one domain see recognisably similar tasks."""
    if domain is None:
        return string.ascii_lowercase
    rng = random.Random(hashlib.blake2b(domain.encode(), digest_size=8).digest())
    return "".join(sorted(rng.sample(string.ascii_lowercase, count)))


def _parse(prompt: str) -> tuple[dict[str, int], list[tuple[int, str]]]:
    """Prompt -> (telemetry, signed terms). Raises InvalidInput naming what is wrong."""
    text = prompt.strip()
    telemetry: dict[str, int] = {}
    match = _TELEMETRY.match(text)
    if match:
        for item in match.group("telemetry").split(","):
            name, value = item.split("=")
            if name in telemetry:
                raise InvalidInput(f"sensor {name!r} given twice", field="prompt")
            telemetry[name] = int(value)
        text = text[match.end() :]
    expr = _EXPRESSION.match(text)
    if not expr:
        raise InvalidInput(
            "not a task of the family: expected '[sensor=value,...;]term(+|-term)*?'",
            field="prompt",
        )
    terms = [(1, expr.group("first"))] + [
        (1 if sign == "+" else -1, term) for sign, term in _TERM.findall(expr.group("rest"))
    ]
    for _, term in terms:
        if term.isalpha() and term not in telemetry:
            raise InvalidInput(f"sensor {term!r} is not in the telemetry", field="prompt")
    return telemetry, terms


def signed_values(prompt: str) -> list[int]:
    """The prompt's terms as signed numbers, look-ups resolved (`'t=41,p=17;t-p?'` ->
    `[41, -17]`); raises InvalidInput for a prompt outside the family."""
    telemetry, terms = _parse(prompt)
    return [sign * (telemetry[t] if t.isalpha() else int(t)) for sign, t in terms]


def solve(prompt: str) -> str:
    """The correct answer to any prompt of the family."""
    return str(sum(signed_values(prompt)))


def estimate_difficulty(prompt: str) -> int:
    """The grade of a prompt read from its structure alone (no model): what the edge offload
    policy uses as the task-weight estimate."""
    telemetry, terms = _parse(prompt)
    operands = len(terms)
    if telemetry:
        return 1 if operands == 1 else 3 if operands == 2 else 5
    return 2 if operands <= 2 else 4


def is_light(prompt: str) -> bool:
    try:
        return estimate_difficulty(prompt) <= LIGHT_MAX_DIFFICULTY
    except InvalidInput:
        return False


def normalize_answer(text: str) -> str | None:
    """The answer a model's output states, or None: the integer after the last `=` of a worked
    answer (`'41+63=104-17=87'` -> `'87'`), else the leading integer (`' 58\\n...'` -> `'58'`)."""
    if "=" in text:
        final = _FINAL_ANSWER.search(text)
        return str(int(final.group(1))) if final else None
    match = _ANSWER.match(text)
    return str(int(match.group(1))) if match else None


class TaskFamilyVerifier:
    """`TaskVerifier` for the family: solves the prompt and compares integers."""

    def verify(self, prompt: str, answer: str) -> bool | None:
        try:
            expected = solve(prompt)
        except InvalidInput:
            return None
        return normalize_answer(answer) == expected


def _operand(rng: random.Random) -> int:
    return rng.randint(0, MAX_OPERAND)


def _telemetry(rng: random.Random, sensors: str, size: int) -> dict[str, int]:
    return {name: _operand(rng) for name in rng.sample(sensors, size)}


def _render(telemetry: Mapping[str, int], terms: Sequence[tuple[int, str]]) -> str:
    head = ",".join(f"{k}={v}" for k, v in telemetry.items())
    body = terms[0][1] + "".join(("+" if s > 0 else "-") + t for s, t in terms[1:])
    return (head + ";" if head else "") + body + "?"


def _telemetry_size(rng: random.Random, operands: int, usual: int, short: bool) -> int:
    """How many sensors a telemetry prompt lists: `usual` or one more; with `short`, anywhere
    from just the sensors the question names up to that (see `iter_tasks`)."""
    return rng.randint(operands if short else usual, usual + 1)


def _draw(rng: random.Random, difficulty: int, sensors: str, short: bool = False) -> str:
    if difficulty == 1:
        tel = _telemetry(rng, sensors, _telemetry_size(rng, 1, 3, short))
        return _render(tel, [(1, rng.choice(list(tel)))])
    if difficulty == 2:
        return _render({}, [(1, str(_operand(rng))), (1, str(_operand(rng)))])
    if difficulty == 3:
        tel = _telemetry(rng, sensors, _telemetry_size(rng, 2, 3, short))
        a, b = rng.sample(list(tel), 2)
        return _render(tel, [(1, a), (1, b)])
    if difficulty == 4:
        return _render(
            {},
            [(1, str(_operand(rng)))]
            + [(rng.choice((1, -1)), str(_operand(rng))) for _ in range(2)],
        )
    if difficulty == 5:
        tel = _telemetry(rng, sensors, _telemetry_size(rng, 3, 4, short))
        a, b, c = rng.sample(list(tel), 3)
        return _render(tel, [(1, a), (rng.choice((1, -1)), b), (rng.choice((1, -1)), c)])
    raise InvalidInput(f"unknown difficulty {difficulty}", field="difficulty", allowed=DIFFICULTIES)


def make_task(prompt: str, domain: str | None = None) -> Task:
    """A Task for any prompt of the family (raises InvalidInput otherwise)."""
    difficulty = estimate_difficulty(prompt)
    return Task(task_id(prompt), KINDS[difficulty], difficulty, prompt, solve(prompt), domain)


def iter_tasks(
    *,
    seed: int,
    split: Split = "train",
    difficulties: Sequence[int] | Mapping[int, float] = DIFFICULTIES,
    domain: str | None = None,
    short_telemetry: bool = False,
) -> Iterator[Task]:
    """An endless seeded stream of tasks from one split. `difficulties` is either the grades
    to draw uniformly or a {grade: weight} mix.

    `short_telemetry` is a training curriculum: telemetry prompts list anywhere from only the
    sensors asked about up to the usual count, so a model first sees look-ups with no
    distractor (a plain copy) and then with one, two, three. Tiny models trained on the usual
    prompts alone stayed at chance on look-ups (they copy *a* value, not the one asked for);
    with the short ones mixed in, the two-step attention a look-up needs forms (docs/cognitive.md).
    Every such prompt is still a task of the family, and the held-out split is unchanged."""
    if isinstance(difficulties, Mapping):
        grades, weights = list(difficulties), [float(w) for w in difficulties.values()]
    else:
        grades, weights = list(difficulties), [1.0] * len(difficulties)
    for grade in grades:
        if grade not in KINDS:
            raise InvalidInput(
                f"unknown difficulty {grade}", field="difficulty", allowed=DIFFICULTIES
            )
    if split not in ("train", "heldout"):
        raise InvalidInput(f"unknown split {split!r}", field="split", allowed=("train", "heldout"))
    rng = random.Random(f"{seed}:{split}:{domain}")
    sensors = domain_sensors(domain)
    while True:
        grade = rng.choices(grades, weights)[0]
        prompt = _draw(rng, grade, sensors, short_telemetry)
        if split_of(prompt) == split:
            yield Task(task_id(prompt), KINDS[grade], grade, prompt, solve(prompt), domain)


def generate_tasks(
    n: int,
    *,
    seed: int,
    split: Split = "train",
    difficulties: Sequence[int] | Mapping[int, float] = DIFFICULTIES,
    domain: str | None = None,
    short_telemetry: bool = False,
) -> list[Task]:
    """`n` tasks from `iter_tasks` (same arguments)."""
    stream = iter_tasks(
        seed=seed,
        split=split,
        difficulties=difficulties,
        domain=domain,
        short_telemetry=short_telemetry,
    )
    return [next(stream) for _ in range(n)]
