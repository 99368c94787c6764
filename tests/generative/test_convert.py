"""AR -> diffusion conversion: the AR model's function survives, and every expert starts as
its FFN."""

from __future__ import annotations

import pytest
import torch

from trifecta.core.errors import InvalidInput
from trifecta.generative.assets import ar_checkpoint_dir
from trifecta.generative.convert import convert_llama
from trifecta.generative.model import Routing


def _dense_ffn(layer: str, x: torch.Tensor) -> torch.Tensor:
    from safetensors.torch import load_file

    w = load_file(str(ar_checkpoint_dir() / "model.safetensors"))
    gate, up, down = (
        w[f"model.layers.{layer}.mlp.{p}_proj.weight"].float() for p in ("gate", "up", "down")
    )
    return torch.nn.functional.silu(x @ gate.T) * (x @ up.T) @ down.T


@pytest.mark.slow  # imports transformers (about 15 s)
def test_causal_conversion_equals_the_llama_checkpoint() -> None:
    from transformers import LlamaForCausalLM

    folder = ar_checkpoint_dir()
    reference = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    model = convert_llama(folder, noise=0.0).eval()
    model.causal = True  # only the mask differs from the diffusion model
    idx = torch.randint(4, 46, (3, 24), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(24).expand(3, 24)
    with torch.no_grad():
        expected = reference(idx).logits
        got, _ = model(idx, positions, torch.ones(3, 24, dtype=torch.bool))
    assert torch.allclose(got, expected, atol=1e-4)


def test_every_expert_is_the_dense_ffn_at_step_zero(converted) -> None:
    from safetensors.torch import load_file

    w = load_file(str(ar_checkpoint_dir() / "model.safetensors"))
    for i, block in enumerate(converted.layers):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            dense = w[f"model.layers.{i}.mlp.{proj}.weight"].float()
            for expert in block.moe.experts:
                copy = getattr(expert, proj).weight.detach()
                # upcycling noise is 1% of the weights' std: far below the weights themselves
                assert (copy - dense).std() < 0.02 * dense.std()
                assert torch.corrcoef(torch.stack([copy.flatten(), dense.flatten()]))[0, 1] > 0.999


def test_without_noise_the_moe_block_computes_the_dense_ffn_whatever_it_routes() -> None:
    model = convert_llama(ar_checkpoint_dir(), noise=0.0).eval()
    x = torch.randn(2, 7, model.config.d_model, generator=torch.Generator().manual_seed(1))
    counted = torch.ones(2, 7, dtype=torch.bool)
    for i, block in enumerate(model.layers):
        with torch.no_grad():
            plain = block.moe(x, counted, None)
            # force other experts through the selection bias: the output does not change
            forced = block.moe(
                x, counted, Routing(bias=torch.tensor([[0, 0, 0, 0, 0, 0, 5.0, 5.0]] * 2))
            )
        assert torch.allclose(plain, _dense_ffn(str(i), x), atol=1e-5)
        assert torch.allclose(forced, plain, atol=1e-5)


def test_a_top_k_above_the_experts_is_refused() -> None:
    with pytest.raises(InvalidInput) as err:
        convert_llama(ar_checkpoint_dir(), n_experts=8, top_k=9)
    assert err.value.field == "top_k"


@pytest.mark.slow  # imports transformers (about 15 s)
def test_causal_conversion_equals_the_canon_llama_tier() -> None:
    """The current small tier (Canon layers, byte-fallback vocabulary) converts too: its Canon
    weights are kept, and on the task alphabet its logits are reproduced."""
    from transformers import AutoModelForCausalLM

    import trifecta.cognitive.canon_llama  # noqa: F401  (registers the model type)

    folder = ar_checkpoint_dir("ar-small-canon")
    reference = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    model = convert_llama(folder, noise=0.0).eval()
    assert model.config.vocab_size == 46 and model.config.canon_width == 4
    assert float(model.layers[0].canon.weight.abs().sum()) > 0  # the tier's own, not zeros
    model.causal = True
    idx = torch.randint(4, 46, (3, 24), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(24).expand(3, 24)
    with torch.no_grad():
        expected = reference(idx).logits[..., :46]
        got, _ = model(idx, positions, torch.ones(3, 24, dtype=torch.bool))
    assert torch.allclose(got, expected, atol=1e-4)
