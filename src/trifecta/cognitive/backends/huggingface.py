"""Backend over a local Hugging Face causal LM (a shipped tier, or a real UserLM checkpoint).

The decoding loop is written here rather than taken from `model.generate` because the
escalation policy needs, at every step and for every sequence of the batch, the entropy of
the unprocessed distribution and the chance to stop that one sequence as soon as its signal
crosses a threshold; `generate` exposes neither to a per-sequence stopping rule.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trifecta.cognitive.backends.base import (
    STOPPED_BY_RULE,
    Backend,
    SamplingOptions,
    StopRule,
    cut_at_stop,
)
from trifecta.cognitive.checkpoints import load_checkpoint
from trifecta.core.errors import InvalidInput
from trifecta.core.protocols import Generation, TokenAlternative

if TYPE_CHECKING:
    import torch


class _Sequence:
    """One prompt's decoding state."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.tokens: list[str] = []
        self.logprobs: list[float] = []
        self.entropies: list[float] = []
        self.top: list[list[TokenAlternative]] = []
        self.text = ""
        self.finish: str | None = None


class HuggingFaceBackend(Backend):
    """Greedy or sampled decoding with a KV cache over a `transformers` causal LM."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        cost_per_token: float | None = None,
        batch_size: int = 64,
        seed: int = 0,
    ):
        super().__init__(name, cost_per_token=cost_per_token)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads
        self._token_text: dict[int, str] = {}
        self._calls = 0

    @classmethod
    def from_directory(
        cls, path: str | Path, *, name: str | None = None, cost_per_token: float | None = None
    ) -> HuggingFaceBackend:
        """Load a checkpoint directory (a bad directory is one `InvalidInput`)."""
        model, tokenizer = load_checkpoint(path)
        return cls(model, tokenizer, name=name or Path(path).name, cost_per_token=cost_per_token)

    @property
    def supports_stop_rule(self) -> bool:
        return True

    def _generate(
        self, prompts: list[str], options: SamplingOptions, stop_rule: StopRule | None
    ) -> list[Generation]:
        import torch

        results: list[Generation] = []
        with self._lock, torch.inference_mode():
            self._calls += 1
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._calls)
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                results += self._decode_batch(chunk, start, options, stop_rule, generator)
        return results

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True)
        except Exception as exc:  # tokenizers raise plain Exceptions for unknown characters
            raise InvalidInput(f"cannot tokenize the prompt: {exc}", field="prompt") from None
        if batch["input_ids"].shape[1] >= self.context_length:
            raise InvalidInput(
                f"prompt longer than the model's context of {self.context_length} tokens",
                field="prompt",
            )
        return batch["input_ids"], batch["attention_mask"]

    def _decode_batch(
        self,
        prompts: list[str],
        offset: int,
        options: SamplingOptions,
        stop_rule: StopRule | None,
        generator: torch.Generator,
    ) -> list[Generation]:
        import torch

        input_ids, mask = self._encode(prompts)
        prompt_lengths = mask.sum(dim=1).tolist()
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True
        )
        next_position = positions[:, -1:] + 1
        room = self.context_length - input_ids.shape[1]
        states = [_Sequence() for _ in prompts]
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for step in range(min(options.max_new_tokens, room)):
            logits = out.logits[:, -1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            probs = logprobs.exp()
            entropy = -torch.where(probs > 0, probs * logprobs, torch.zeros_like(probs)).sum(dim=-1)
            if options.temperature > 0:
                chosen = torch.multinomial(
                    torch.softmax(logits / options.temperature, dim=-1), 1, generator=generator
                ).squeeze(1)
            else:
                chosen = logits.argmax(dim=-1)
            chosen_logprob = logprobs.gather(1, chosen[:, None]).squeeze(1)
            top_values, top_ids = (
                logprobs.topk(min(options.top_logprobs, logprobs.shape[-1]), dim=-1)
                if options.top_logprobs
                else (None, None)
            )
            ids, lps, ents = chosen.tolist(), chosen_logprob.tolist(), entropy.tolist()
            for row, state in enumerate(states):
                if state.finish is not None:
                    continue
                if ids[row] == eos:
                    state.finish = "stop"
                    continue
                state.ids.append(ids[row])
                state.tokens.append(self._text_of(ids[row]))
                state.logprobs.append(lps[row])
                state.entropies.append(ents[row])
                if top_ids is not None and top_values is not None:
                    state.top.append(
                        [
                            TokenAlternative(self._text_of(i), lp)
                            for i, lp in zip(
                                top_ids[row].tolist(), top_values[row].tolist(), strict=True
                            )
                        ]
                    )
                state.text = self.tokenizer.decode(state.ids, skip_special_tokens=True)
                if options.stop:
                    state.text, hit = cut_at_stop(state.text, options.stop)
                    if hit:
                        state.finish = "stop"
                        continue
                if stop_rule is not None and stop_rule(offset + row, state.entropies, state.tokens):
                    state.finish = STOPPED_BY_RULE
            if (
                all(state.finish is not None for state in states)
                or step + 1 == options.max_new_tokens
            ):
                break
            feed = torch.tensor(
                [[pad if s.finish else i] for s, i in zip(states, ids, strict=True)]
            )
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.model(
                input_ids=feed,
                attention_mask=mask,
                position_ids=next_position,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            next_position = next_position + 1
        return [
            Generation(
                text=state.text,
                tokens=state.tokens,
                logprobs=state.logprobs,
                entropies=state.entropies,
                finish_reason=state.finish or "length",
                model=self.name,
                prompt_tokens=int(length),
                top_logprobs=state.top,
            )
            for state, length in zip(states, prompt_lengths, strict=True)
        ]

    def _text_of(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode(
                [token_id], skip_special_tokens=True
            )
        return text
