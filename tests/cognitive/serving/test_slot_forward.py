"""The continuous-batching forward: a step that mixes newcomers' prompts with running rows' next
tokens gives each row the logits of the model's own forward over that row alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from trifecta.cognitive.canon_llama import CanonLlamaForCausalLM
from trifecta.cognitive.checkpoints import llama_config
from trifecta.cognitive.serving.slot_forward import SlotForward, StepRows
from trifecta.cognitive.tiers import get_tier
from trifecta.core.errors import InvalidInput


@pytest.fixture(scope="module")
def canon() -> CanonLlamaForCausalLM:
    """The small tier's architecture with Canon weights that matter (trained ones are not 0)."""
    torch.manual_seed(0)
    model = CanonLlamaForCausalLM(llama_config(get_tier("small"))).eval()
    with torch.no_grad():
        for mix in model.model.canons:
            mix.weight.normal_(0, 0.3)
    return model


# Each step: for each of 4 slots, how many tokens it is fed (0: not running yet / any more).
plans = st.lists(st.lists(st.integers(0, 6), min_size=4, max_size=4), min_size=1, max_size=5)


def run_plan(model: Any, plan: list[list[int]]) -> float:
    """Feed four fixed sequences step by step as `plan` says; the largest logit difference
    from the model's own forward over each row's tokens so far."""
    forward = SlotForward(model, slots=4)
    sequences = [[(7 * r + 3 * i) % 30 + 3 for i in range(40)] for r in range(4)]
    fed = [0] * 4
    worst = 0.0
    with torch.inference_mode():
        for counts in plan:
            running = [r for r in range(4) if counts[r]]
            if not running:
                continue
            # A step covers slots 0..n-1: a slot inside that range with nothing planned
            # decodes one token, as a running row does.
            n = max(running) + 1
            chunks = [sequences[r][fed[r] : fed[r] + max(1, counts[r])] for r in range(n)]
            logits = forward.step(StepRows(fed[:n], chunks))
            for r in range(n):
                fed[r] += len(chunks[r])
                alone = model(torch.tensor([sequences[r][: fed[r]]])).logits[0, -1]
                worst = max(worst, float((alone - logits[r]).abs().max()))
    return worst


@settings(max_examples=15, deadline=None)
@given(plan=plans)
def test_mixed_steps_match_the_tier_models_own_forward(
    canon: CanonLlamaForCausalLM, plan: list[list[int]]
) -> None:
    assert run_plan(canon, plan) < 1e-4


@settings(max_examples=10, deadline=None)
@given(plan=plans)
def test_mixed_steps_match_a_plain_llama(tiny: tuple[Any, Any], plan: list[list[int]]) -> None:
    assert run_plan(tiny[0], plan) < 1e-3  # wide random weights: logits in the tens


def test_a_model_it_cannot_run_is_refused_by_name() -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=40))
    with pytest.raises(InvalidInput, match="GPT2LMHeadModel") as caught:
        SlotForward(gpt2, slots=2)
    assert caught.value.field == "model_path"


class ScaledLlama(LlamaForCausalLM):
    """A Llama whose own forward does something the slot forward does not know about."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out


def test_a_llama_that_computes_something_else_is_refused(tiny: tuple[Any, Any]) -> None:
    model = ScaledLlama(tiny[0].config).eval()
    model.load_state_dict(tiny[0].state_dict())
    with pytest.raises(InvalidInput, match="logits differ"):
        SlotForward(model, slots=2).check_agrees()


@settings(max_examples=5, deadline=None)
@given(plan=plans)
def test_mixed_steps_match_a_llama_with_biases_and_grouped_heads(plan: list[list[int]]) -> None:
    """Projections with biases (stacked with the weights) and fewer key-value heads than
    query heads (queries and keys turned together) compute what the model's forward does."""
    from transformers import LlamaConfig

    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attention_bias=True,
        mlp_bias=True,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.5)  # biases start at zero: make them count
    assert run_plan(model, plan) < 1e-4


def test_the_scripted_step_computes_the_eager_steps_logits(canon: CanonLlamaForCausalLM) -> None:
    """The step a replica runs (one TorchScript call: `scripted_step`) and the eager step give
    the same logits and leave the same cache, on a step of prompts and one of decoding rows."""
    scripted, eager = SlotForward(canon, slots=3), SlotForward(canon, slots=3)
    assert scripted.scripted is not None
    prompts = StepRows([0, 0, 0], [[5, 6, 7], [8, 9], [10, 11, 12, 13]])
    decoding = StepRows([3, 2, 4], [[14], [15], [16]])
    with torch.inference_mode():
        for rows in (prompts, decoding):
            got, want = scripted.step(rows), eager.step(rows, eager=True)
            assert torch.allclose(got, want, atol=1e-5)
    for ours, theirs in zip(scripted.cache.planes, eager.cache.planes, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_a_torch_that_cannot_script_runs_the_same_step_eagerly(
    canon: CanonLlamaForCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where TorchScript's compiler is missing, the scripted module's own code runs eagerly:
    same logits as the eager step, no error."""

    def no_compiler(target: object) -> object:
        raise RuntimeError("TorchScript is not available in this build")

    monkeypatch.setattr(torch.jit, "script", no_compiler)
    fallback, eager = SlotForward(canon, slots=2), SlotForward(canon, slots=2)
    assert fallback.scripted is not None
    assert not isinstance(fallback.scripted, torch.jit.ScriptModule)
    rows = StepRows([0, 0], [[5, 6, 7], [8, 9]])
    with torch.inference_mode():
        assert torch.allclose(fallback.step(rows), eager.step(rows, eager=True), atol=1e-5)
