"""The torch-free runtime: no torch imported, and the same tokens as the PyTorch reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trifecta.core.errors import InvalidInput
from trifecta.core.protocols import LanguageModel
from trifecta.core.tasks import generate_tasks
from trifecta.core.tokenizer import CharTokenizer
from trifecta.edge.artifact import EdgeArtifact
from trifecta.edge.kernels import available_kernels
from trifecta.edge.model import EdgeTransformer
from trifecta.edge.runtime import EdgeRuntime

from .helpers import reference_texts

RUNNABLE = [name for name, reason in available_kernels().items() if reason is None]


def test_runtime_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, trifecta.edge.runtime, trifecta.edge.node, trifecta.edge.mesh;"
        "import trifecta.edge.cli;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'));"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""


@pytest.mark.slow
@pytest.mark.parametrize("kernel", RUNNABLE)
def test_tokens_equal_the_pytorch_model(kernel: str, shipped_artifact: EdgeArtifact) -> None:
    prompts = [t.prompt for t in generate_tasks(40, seed=11, split="heldout")]
    runtime = EdgeRuntime(shipped_artifact, kernel=kernel)
    texts = [g.text for g in runtime.generate(prompts, max_new_tokens=6)]
    assert texts == reference_texts(shipped_artifact, prompts, 6)


def test_small_model_tokens_equal_the_pytorch_model(small_artifact: EdgeArtifact) -> None:
    prompts = [t.prompt for t in generate_tasks(12, seed=3, split="heldout")]
    texts = [g.text for g in EdgeRuntime(small_artifact).generate(prompts, max_new_tokens=5)]
    assert texts == reference_texts(small_artifact, prompts, 5)


def test_every_layer_computes_what_the_reference_computes(shipped_artifact: EdgeArtifact) -> None:
    """Feed each BitLinear's captured input to both: identical integer accumulations and
    identical float32 outputs, bit for bit."""
    model = EdgeTransformer.from_artifact(shipped_artifact)
    runtime = EdgeRuntime(shipped_artifact)
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(
            lambda m, inp, out, name=name: captured.__setitem__(name, inp[0][0])
        )
        for name, layer in model.bitlinears().items()
    ]
    tokenizer = CharTokenizer()
    with torch.no_grad():
        model(torch.tensor([tokenizer.encode("t=41,p=17,r=63;p?", bos=True)]))
    for hook in hooks:
        hook.remove()
    blocks = {
        f"blocks.{i}.{part}": getattr(block, part)
        for i, block in enumerate(runtime.blocks)
        for part in ("qkv", "out", "up", "down")
    }
    for name, layer in model.bitlinears().items():
        x = captured[name]
        expected_acc, _ = layer.integer_matmul(x)
        x_np = x.numpy()
        from trifecta.edge.kernels.reference import quantize_activations

        x_q, _ = quantize_activations(x_np)
        assert np.array_equal(
            blocks[name].prepared.matmul(x_q), expected_acc.numpy().astype(np.int32)
        ), name
        assert np.array_equal(blocks[name](x_np, 1), layer(x).detach().numpy()), name


def test_generation_carries_logprobs_and_entropies(small_artifact: EdgeArtifact) -> None:
    runtime = EdgeRuntime(small_artifact)
    assert isinstance(runtime, LanguageModel)
    [g] = runtime.generate(["41+17?"], max_new_tokens=4, top_logprobs=3)
    assert len(g.tokens) == len(g.logprobs) == len(g.entropies) == len(g.top_logprobs) <= 4
    assert g.text == "".join(g.tokens)
    assert all(lp <= 0 for lp in g.logprobs) and all(
        0 <= h <= np.log(runtime.config.vocab_size) + 1e-6 for h in g.entropies
    )
    assert g.finish_reason in ("stop", "length") and g.prompt_tokens == len("41+17?") + 1
    for step, chosen in zip(g.top_logprobs, g.logprobs, strict=True):
        assert [a.logprob for a in step] == sorted((a.logprob for a in step), reverse=True)
        assert step[0].logprob == pytest.approx(chosen)  # greedy: the chosen token is the best


def test_sampling_is_seeded_and_length_capped(small_artifact: EdgeArtifact) -> None:
    first = EdgeRuntime(small_artifact, seed=5).generate(
        ["12+34?"] * 3, max_new_tokens=3, temperature=1.5
    )
    again = EdgeRuntime(small_artifact, seed=5).generate(
        ["12+34?"] * 3, max_new_tokens=3, temperature=1.5
    )
    assert [g.tokens for g in first] == [g.tokens for g in again]
    assert all(len(g.tokens) <= 3 for g in first)


def test_bad_prompts_are_invalid_input(small_artifact: EdgeArtifact) -> None:
    runtime = EdgeRuntime(small_artifact)
    with pytest.raises(InvalidInput, match="outside the model's alphabet") as info:
        runtime.generate(["41 + 17?"])
    assert info.value.field == "prompt"
    with pytest.raises(InvalidInput, match="exceeds"):
        runtime.generate(["1+" * 40 + "1?"])
    with pytest.raises(InvalidInput) as info:
        runtime.generate(["1+1?"], max_new_tokens=0)
    assert info.value.field == "max_new_tokens"


def test_blas_is_capped_once_when_built_and_stays_capped_while_generating(
    small_artifact_path: Path,
) -> None:
    # In a fresh process: numpy's BLAS (the runtime's float products) is capped once a process
    # (`kernels.cpu.pin_threads`), and `generate` no longer re-applies the cap each call. The
    # BLAS that numba's first compilation loads (scipy's, which no kernel calls) is left out.
    code = (
        "import pathlib, sys, threadpoolctl;"
        "from trifecta.edge.artifact import EdgeArtifact;"
        "from trifecta.edge.runtime import EdgeRuntime;"
        "blas = lambda: {i['filepath']: i['num_threads'] for i in"
        " threadpoolctl.threadpool_info() if i['user_api'] == 'blas'};"
        "rt = EdgeRuntime(EdgeArtifact.load(pathlib.Path(sys.argv[1])));"
        "built = blas();"
        "texts = [g.text for g in rt.generate(['3+4=', '12+5='], max_new_tokens=4)];"
        "after = blas();"
        "print(sorted(set(built.values())), sorted({after[k] for k in built}), len(texts))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(small_artifact_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.split("\n")[-2] == "[1] [1] 2"
