"""AR -> diffusion conversion: the AR model's function survives, and every expert starts as
its FFN."""

from __future__ import annotations

import pytest
import torch

from trifecta.core.errors import InvalidInput
from trifecta.generative.assets import ar_checkpoint_dir
from trifecta.generative.convert import convert_llama
from trifecta.generative.model import DiffusionLM, Routing


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


def test_every_expert_is_the_dense_ffn_at_step_zero(converted: DiffusionLM) -> None:
    from safetensors.torch import load_file

    w = load_file(str(ar_checkpoint_dir() / "model.safetensors"))
    for i, block in enumerate(converted.blocks()):
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
    for i, block in enumerate(model.blocks()):
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
    canon = model.blocks()[0].canon
    assert canon is not None, "a tier with Canon layers converts to blocks with them"
    assert float(canon.weight.abs().sum()) > 0  # the tier's own, not zeros
    model.causal = True
    idx = torch.randint(4, 46, (3, 24), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(24).expand(3, 24)
    with torch.no_grad():
        expected = reference(idx).logits[..., :46]
        got, _ = model(idx, positions, torch.ones(3, 24, dtype=torch.bool))
    assert torch.allclose(got, expected, atol=1e-4)


def _dense_ffn_of(folder_name: str, layer: int, x: torch.Tensor) -> torch.Tensor:
    from safetensors.torch import load_file

    w = load_file(str(ar_checkpoint_dir(folder_name) / "model.safetensors"))
    gate, up, down = (
        w[f"model.layers.{layer}.mlp.{p}_proj.weight"].float() for p in ("gate", "up", "down")
    )
    return torch.nn.functional.silu(x @ gate.T) * (x @ up.T) @ down.T


def test_fine_grained_upcycling_keeps_the_dense_ffn_when_whole_virtual_groups_are_chosen() -> None:
    """Granularity 4 (He et al. 2024's virtual groups): 8 experts of a quarter width, top-4;
    a group's experts share a router row, and each shard's down projection is scaled by 4, so
    the medium tier's FFN is computed exactly, whichever group the router or a bias picks."""
    model = convert_llama(
        ar_checkpoint_dir("ar-medium-canon"), n_experts=8, top_k=4, granularity=4, noise=0.0
    ).eval()
    assert model.config.d_ff == 384 // 4
    x = torch.randn(2, 7, model.config.d_model, generator=torch.Generator().manual_seed(1))
    counted = torch.ones(2, 7, dtype=torch.bool)
    second_group = Routing(bias=torch.tensor([[0, 0, 0, 0, 5.0, 5.0, 5.0, 5.0]] * 3))
    for i, block in enumerate(model.blocks()):
        router = block.moe.router.weight.detach()
        assert torch.equal(router[0], router[3]) and torch.equal(router[4], router[7])
        assert not torch.equal(router[0], router[4])
        with torch.no_grad():
            plain = block.moe(x, counted, None)
            forced = block.moe(x, counted, second_group)
        dense = _dense_ffn_of("ar-medium-canon", i, x)
        assert torch.allclose(plain, dense, atol=1e-4)
        assert torch.allclose(forced, dense, atol=1e-4)
    # with top-k below the shards only part of the FFN could run: refused, naming the field
    with pytest.raises(InvalidInput) as err:
        convert_llama(ar_checkpoint_dir("ar-medium-canon"), n_experts=8, top_k=2, granularity=4)
    assert err.value.field == "top_k"
    with pytest.raises(InvalidInput) as err:
        convert_llama(ar_checkpoint_dir("ar-medium-canon"), n_experts=8, top_k=3, granularity=3)
    assert err.value.field == "granularity"


def test_granularity_one_is_the_plain_upcycling_bit_for_bit(converted: DiffusionLM) -> None:
    """The first recipes still reproduce: granularity 1 draws and copies as before."""
    again = convert_llama(ar_checkpoint_dir(), granularity=1).eval()
    for name, tensor in converted.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
