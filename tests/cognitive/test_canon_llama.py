"""The tiers' architecture: a Llama with Canon layers that caches, pads, saves and grows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from trifecta.cognitive.backends import HuggingFaceBackend
from trifecta.cognitive.canon_llama import CanonLlamaForCausalLM
from trifecta.cognitive.checkpoints import (
    build_tokenizer,
    llama_config,
    load_checkpoint,
    save_checkpoint,
)
from trifecta.cognitive.growth import grow
from trifecta.cognitive.tiers import TIERS
from trifecta.core.tasks import generate_tasks

SMALL = dataclasses.replace(TIERS["small"], hidden_size=32, heads=2, intermediate_size=64)
MEDIUM = dataclasses.replace(TIERS["medium"], hidden_size=48, heads=3, intermediate_size=96)


def random_model(spec: object = SMALL, seed: int = 0) -> CanonLlamaForCausalLM:
    torch.manual_seed(seed)
    model = CanonLlamaForCausalLM(llama_config(spec)).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for canon in model.model.canons:
            canon.weight.normal_(0, 0.5)  # trained Canon weights are far from zero
    return model


def test_cached_decoding_matches_the_full_forward_pass() -> None:
    model = random_model()
    ids = torch.randint(4, 46, (2, 14))
    with torch.inference_mode():
        full = model(input_ids=ids).logits
        out = model(input_ids=ids[:, :9], use_cache=True)
        steps = [out.logits]
        for t in range(9, 14):
            out = model(
                input_ids=ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True
            )
            steps.append(out.logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    # The Canon inputs ride in the same cache, after the attention layers.
    assert len(out.past_key_values.layers) == 2 * model.config.num_hidden_layers


def test_left_padding_changes_nothing() -> None:
    model = random_model()
    prompts = [t.prompt for t in generate_tasks(6, seed=3, split="heldout")]
    tokenizer = build_tokenizer()
    batched = HuggingFaceBackend(model, tokenizer, name="m").generate(prompts, max_new_tokens=6)
    alone = [
        HuggingFaceBackend(model, tokenizer, name="m").generate([p], max_new_tokens=6)[0]
        for p in prompts
    ]
    assert [g.tokens for g in batched] == [g.tokens for g in alone]
    for a, b in zip(batched, alone, strict=True):
        assert a.entropies == pytest.approx(b.entropies, abs=1e-4)


def test_a_tier_saves_and_loads_as_a_hugging_face_directory(tmp_path: Path) -> None:
    model = random_model()
    save_checkpoint(model, tmp_path / "tier")
    loaded, tokenizer = load_checkpoint(tmp_path / "tier")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "tier")
    assert isinstance(loaded, CanonLlamaForCausalLM) and isinstance(again, CanonLlamaForCausalLM)
    ids = tokenizer(["t=41,p=17;p?"], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        # float16 on disk: the same logits to float16 precision
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=2e-2)


def test_growth_keeps_the_canon_model_s_function() -> None:
    small = random_model(SMALL)
    grown = grow(small, MEDIUM, seed=1).eval()
    tokenizer = build_tokenizer()
    batch = tokenizer(
        [t.prompt for t in generate_tasks(8, seed=2, split="heldout")],
        return_tensors="pt",
        padding=True,
    )
    with torch.inference_mode():
        a, b = small(**batch).logits, grown(**batch).logits
    mask = batch["attention_mask"].bool()
    assert torch.allclose(a[mask], b[mask], atol=1e-4)


def test_a_nan_at_a_padding_position_never_reaches_a_real_token() -> None:
    """A padding position whose attention row was fully masked can hold NaN; the Canon mix
    stores padding as zero, so the real tokens after it stay finite."""
    from trifecta.cognitive.canon_llama import CanonMix

    mix = CanonMix(hidden=3, width=4)
    with torch.no_grad():
        mix.weight.fill_(0.5)
    x = torch.ones(1, 5, 3)
    x[0, :2] = float("nan")  # two left-padding positions
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    out = mix(x, None, 0, mask)
    assert torch.isfinite(out[0, 2:]).all()
