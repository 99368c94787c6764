"""The generative model under a name, for the OpenAI-compatible API (`core.protocols.NamedModels`).

The cognitive layer's `/v1/completions` dispatches a request whose `model` is one of
`MODEL_NAMES` here (the serve layer composes the two; neither layer imports the other). Each
prompt is decoded for the API key's capsule, so its expert mask and router biases apply and
its traffic is recorded like the loop's. Usage is priced as the checkpoint the model stands
for (`rnd1-30b-a3b`) on the accelerator the fleet sizes it best on, as the cost ledger does.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from trifecta.core.errors import InvalidInput, NotFound
from trifecta.core.protocols import NamedCompletion
from trifecta.core.settings import Phase
from trifecta.fleet.accelerators import get_accelerator
from trifecta.fleet.sizing import PRESETS, Sizing, serving_shape
from trifecta.generative.decoding import DecodeConfig
from trifecta.generative.service import GenerativeRequest, GenerativeService

PRESET = "rnd1-30b-a3b"  # what the shipped MoE diffusion model stands for
MODEL_NAMES = ("rnd1", PRESET)
ANONYMOUS = "anonymous"  # the admin key's requests: no capsule, so no mask and shared biases
PRICING_CONTEXT = 4096  # the cognitive API's pricing window (cognitive.serving.cost)
PRICED_ON = ("h100", "a100-80gb")  # where the ledger prices a model no plan placed
MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 60  # GenerativeRequest's bound: the shipped model's 64 positions less 20


class GenerativeModels:
    """`NamedModels` over a `GenerativeService`."""

    def __init__(self, service: GenerativeService, phase: Phase):
        self.service = service
        self.phase: Phase = phase

    def model_names(self) -> list[str]:
        return list(MODEL_NAMES)

    @cached_property
    def _shape(self) -> Sizing:
        spec = PRESETS[PRESET]
        shapes = [
            s
            for acc in PRICED_ON
            if (s := serving_shape(spec, acc, phase=self.phase, context=PRICING_CONTEXT))
            is not None
        ]
        return min(shapes, key=lambda s: s.cost_per_million_tokens)

    def complete_named(
        self,
        model: str,
        capsule_id: str | None,
        prompts: Sequence[str],
        *,
        max_tokens: int,
        steps: int | None = None,
    ) -> list[NamedCompletion]:
        if model not in MODEL_NAMES:
            raise NotFound(f"the model {model!r} does not exist", field="model")
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise InvalidInput(f"1 to {MAX_PROMPTS} prompts, got {len(prompts)}", field="prompt")
        for i, prompt in enumerate(prompts):
            if not 1 <= len(prompt) <= MAX_PROMPT_CHARS:
                where = f"prompt.{i}" if len(prompts) > 1 else "prompt"
                raise InvalidInput(
                    f"1 to {MAX_PROMPT_CHARS} characters, got {len(prompt)}", field=where
                )
        if steps is not None:  # the decoder's own check, named as the API names the field
            DecodeConfig(steps=steps)
        capsule = capsule_id or ANONYMOUS
        requests = [GenerativeRequest(capsule_id=capsule, prompt=p, steps=steps) for p in prompts]
        shape = self._shape
        spec = PRESETS[PRESET]
        prefill_s = (
            2 * spec.active / get_accelerator(shape.accelerator).ops_per_s(spec.bits_per_weight)
        )  # per prompt token: prefill is compute-bound (as the ledger prices it)
        out = []
        for request, response in zip(requests, self.service.complete_batch(requests), strict=True):
            text = response.text[:max_tokens]
            completion_tokens = len(text)  # character-level model: one token per character
            prompt_tokens = len(request.prompt) + 1  # and its `<bos>`
            seconds = (
                prompt_tokens * prefill_s + completion_tokens * shape.accelerator_seconds_per_token
            )
            out.append(
                NamedCompletion(
                    text=text,
                    finish_reason="length" if len(response.text) > max_tokens else "stop",
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    preset=PRESET,
                    accelerator=shape.accelerator,
                    tp_degree=shape.tp_degree,
                    accelerator_seconds=seconds,
                    usd=seconds * shape.hour_price / 3600,
                )
            )
        return out
