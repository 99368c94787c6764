"""What the diffusion model reads and writes: `<bos>prompt` then a response region of
`gen_length` positions, filled with the answer's scratchpad, `<eos>` and `<eos>` padding.

The scratchpad spells the work out left to right: looked-up sensor values substituted, then a
running total after each operation (`t=41,p=17,r=63;t+r-p?` -> `41+63=104-17=87`); the answer
is what follows the last `=`. Multi-step sums were what the autoregressive tiers failed
(grades 3-5 under 30%); written this way each new number depends on two numbers already on
the page, which the denoising steps fill first. LLaDA trains its padding `<eos>` tokens like
any other token, so the model also learns where the answer ends.

Two styles. `operands` (the first shipped model's): the values alone, as above, and a
two-number sum written out (`41+17?` -> `41+17=58`). `named` (the cognitive layer's style that
took its large tier to 92.5% on grade 5, docs/cognitive.md): each looked-up value follows its
sensor's name (`t=41,p=17,r=63;t+r-p?` -> `t41+r63=104-p17=87`), so every value is written
right after the name that selects it; a single look-up or a sum of two numbers is answered
directly (`p?` -> `17`, `41+17?` -> `58`). The longest `named` answer of the family is 20
characters (`a10-b99=-89-c99=-188`). `operands_direct`: the medium and large tiers' own
`operands` (cognitive `scratchpad.py`): `operands` without names, but a single look-up or a sum
of two numbers answered directly (`41+17?` -> `58`), so a model converted from one of those
tiers is trained to write what its source already writes.

Rows are left-padded so every request's response region occupies the same columns (block
decoding walks them together); rotary positions count from each row's first real token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal

import torch

from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import estimate_difficulty, normalize_answer, signed_values, solve
from trifecta.core.tokenizer import CharTokenizer

_TERM = re.compile(r"([+-]?)([a-z]|\d{1,3})")
Style = Literal["operands", "named", "operands_direct"]


def scratchpad(prompt: str, style: Style = "operands") -> str:
    """The worked answer of a task-family prompt in `style` (see the module docstring)."""
    if style != "operands":
        return named_scratchpad(prompt, names=style == "named")
    telemetry, _, expression = prompt.strip().rpartition(";")
    head = telemetry + ";" if telemetry else ""
    terms = _TERM.findall(expression.rstrip("?"))
    values = [solve(f"{head}{name}?") for _, name in terms]
    text, total = values[0], int(values[0])
    for (sign, _), value in zip(terms[1:], values[1:], strict=True):
        total += int(value) if sign == "+" else -int(value)
        text += f"{sign}{value}={total}"
    return text


def named_scratchpad(prompt: str, names: bool = True) -> str:
    """`t=41,p=17,r=63;t+r-p?` -> `t41+r63=104-p17=87`; `p?` -> `17`; `41+17?` -> `58`.
    Without `names`: `41+63=104-17=87` (`operands_direct`)."""
    values = signed_values(prompt)
    partials = list(accumulate(values))
    if len(values) == 1 or (len(values) == 2 and estimate_difficulty(prompt) == 2):
        return str(partials[-1])
    expression = prompt.strip().rpartition(";")[2]
    terms = _TERM.findall(expression)
    labels = [name if names and name.isalpha() else "" for _, name in terms]
    text = labels[0] + str(values[0])
    for name, value, partial in zip(labels[1:], values[1:], partials[1:], strict=True):
        text += f"{'-' if value < 0 else '+'}{name}{abs(value)}={partial}"
    return text


def answer_of(response: str) -> str | None:
    """The final answer in a generated scratchpad (None when there is none)."""
    return normalize_answer(response.rpartition("=")[2])


@dataclass
class Batch:
    ids: torch.Tensor  # (B, T) token ids, response region at columns [start, start + gen_length)
    positions: torch.Tensor  # (B, T) rotary positions
    valid: torch.Tensor  # (B, T) bool, False on left padding
    start: int  # first column of the response region


def encode_prompts(
    prompts: Sequence[str], tokenizer: CharTokenizer, gen_length: int, block_size: int
) -> Batch:
    """Left-padded `<bos>prompt` rows followed by `gen_length` `<mask>` positions."""
    encoded = [tokenizer.encode(p, bos=True) for p in prompts]
    width = max(map(len, encoded))
    if width + gen_length > block_size:
        raise InvalidInput(
            f"a prompt of {width - 1} characters plus {gen_length} generated positions exceeds "
            f"the model's {block_size}",
            field="prompt",
        )
    B, T = len(encoded), width + gen_length
    ids = torch.full((B, T), tokenizer.mask_id, dtype=torch.long)
    valid = torch.ones((B, T), dtype=torch.bool)
    positions = torch.zeros((B, T), dtype=torch.long)
    for i, row in enumerate(encoded):
        pad = width - len(row)
        ids[i, :pad] = tokenizer.pad_id
        ids[i, pad:width] = torch.tensor(row)
        valid[i, :pad] = False
        positions[i, pad:] = torch.arange(T - pad)
    return Batch(ids, positions, valid, width)


def encode_targets(
    prompts: Sequence[str],
    tokenizer: CharTokenizer,
    gen_length: int,
    block_size: int,
    style: Style = "operands",
) -> tuple[Batch, torch.Tensor]:
    """The batch with its response region filled with the targets, and those targets
    (B, gen_length): scratchpad, `<eos>`, `<eos>` padding."""
    batch = encode_prompts(prompts, tokenizer, gen_length, block_size)
    targets = torch.full((len(prompts), gen_length), tokenizer.eos_id, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        worked = tokenizer.encode(scratchpad(prompt, style))
        if len(worked) >= gen_length:
            raise InvalidInput(f"{prompt!r} needs {len(worked) + 1} positions", field="gen_length")
        targets[i, : len(worked)] = torch.tensor(worked)
    batch.ids[:, batch.start :] = targets
    return batch, targets
