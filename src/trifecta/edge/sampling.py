"""Choosing the next token from logits, with what the escalation policy reads.

The log-probability and entropy reported for a token are those of the model's own
distribution (softmax of the logits); temperature only changes how the token is drawn
(0: greedy, ties to the lowest id, as `torch.argmax` breaks them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from trifecta.core.tokenizer import CharTokenizer


@dataclass(frozen=True)
class NextToken:
    token_id: int
    logprob: float
    entropy: float
    alternatives: tuple[tuple[str, float], ...] = ()


def log_softmax(logits: NDArray[np.float32]) -> NDArray[np.float64]:
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return shifted - np.log(np.sum(np.exp(shifted)))


def choose_token(
    logits: NDArray[np.float32],
    temperature: float,
    top_logprobs: int,
    rng: np.random.Generator,
    tokenizer: CharTokenizer,
) -> NextToken:
    logprobs = log_softmax(logits)
    probs = np.exp(logprobs)
    entropy = float(-np.sum(probs * logprobs))
    if temperature == 0:
        token = int(np.argmax(logits))
    else:
        tempered = np.exp(log_softmax((logits / np.float32(temperature)).astype(np.float32)))
        token = int(rng.choice(len(tempered), p=tempered / tempered.sum()))
    alternatives: tuple[tuple[str, float], ...] = ()
    if top_logprobs > 0:
        best = np.argsort(-logprobs, kind="stable")[:top_logprobs]
        alternatives = tuple((tokenizer.token(int(i)), float(logprobs[i])) for i in best)
    return NextToken(token, float(logprobs[token]), entropy, alternatives)
