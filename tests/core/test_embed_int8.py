"""The int8 engine of the embedder (core/embed_int8.py): its Linear computes the float product
within int8's error whatever the smoothing and the unsigned shift, SmoothQuant's factors are
the paper's formula, calibration is reproducible, the engine's vectors are near float32's
and do not depend on the batch a text is padded into, and a CPU without the int8 kernel runs
eager. Also the fused engine's vectors alone and inside a padded batch (the shipped path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trifecta.core import embed_int8
from trifecta.core.embed_compiled import ENGINE_ENV, load_engine
from trifecta.core.embed_int8 import (
    GELU_FLOOR,
    Int8Encoder,
    Int8Linear,
    calibration_texts,
    int8_support,
    smoothing,
)
from trifecta.core.embeddings import MiniLMEmbedder, get_embedder

from .test_embed_fused import QUERIES

LONG = " ".join(["t=41,p=17,r=63,s=5;t+r-p? energy plant reading"] * 6)  # about 120 tokens
# The least cosine of an int8 vector to float32's (measured 0.9986 over the benchmark's
# prompts, benchmarks/embeddings.py), and between one text's vectors alone and in a padded
# batch on one engine (measured: 0.99999+ both engines).
COSINE_FLOAT32, COSINE_PADDED = 0.997, 0.9999
needs_int8 = pytest.mark.skipif(int8_support() is not None, reason=str(int8_support()))


def _relative_error(out: torch.Tensor, exact: torch.Tensor) -> float:
    return float((out - exact).norm() / exact.norm())


@needs_int8
@pytest.mark.parametrize("smoothed", [False, True])
def test_the_int8_linear_gives_the_float_product_within_int8_error(smoothed: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(64, 48, generator=generator) * 0.1
    bias = torch.randn(64, generator=generator)
    x = torch.randn(2, 5, 48, generator=generator)
    x[..., 7] *= 40  # an outlier channel, as MiniLM's activations have
    factors = smoothing(x.abs().reshape(-1, 48).amax(0), weight, 0.5) if smoothed else None
    out = Int8Linear(weight, bias, factors)(x)
    exact = torch.nn.functional.linear(x, weight, bias)
    assert out.shape == (2, 5, 64)
    assert _relative_error(out, exact) < 0.02


@needs_int8
def test_the_unsigned_linear_takes_the_shift_out_of_its_bias_and_applies_gelu() -> None:
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(32, 96, generator=generator) * 0.1
    bias = torch.randn(32, generator=generator)
    x = torch.nn.functional.gelu(torch.randn(7, 96, generator=generator) * 3)  # >= -0.17
    peaks = x.abs().amax(0) + GELU_FLOOR
    out = Int8Linear(weight, bias, smoothing(peaks, weight, 0.5), floor=GELU_FLOOR)(x)
    exact = torch.nn.functional.linear(x, weight, bias)
    assert _relative_error(out, exact) < 0.02
    # A shift not taken out of the bias would move every output by W @ shift: far larger.
    assert (out - exact).abs().max() < 0.1 * (weight.sum(1) * GELU_FLOOR).abs().max() + 0.05
    activated = Int8Linear(weight, bias, None, gelu=True)(x)
    assert _relative_error(activated, torch.nn.functional.gelu(exact)) < 0.03


def test_smoothing_factors_are_smoothquants_formula() -> None:
    peaks = torch.tensor([16.0, 1.0, 4.0])
    weight = torch.tensor([[1.0, -4.0, 0.25], [-0.5, 1.0, 0.5]])  # column peaks 1, 4, 0.5
    expected = torch.tensor([16**0.5 / 1**0.5, 1 / 4**0.5, 4**0.5 / 0.5**0.5])
    assert torch.allclose(smoothing(peaks, weight, 0.5), expected)
    # alpha 1: all of the range moves to the weights, s = the activations' peaks.
    assert torch.allclose(smoothing(peaks, weight, 1.0), peaks)


def test_calibration_texts_are_the_same_in_every_process_and_distinct() -> None:
    texts = calibration_texts()
    assert texts == calibration_texts()
    assert len(texts) == embed_int8.CALIBRATION_TEXTS == len(set(texts))
    assert all(text.endswith("?") for text in texts)  # the task family's prompts


def test_the_int8_engine_is_only_chosen_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert load_engine(None, "bfloat16") != "int8"
    monkeypatch.setenv(ENGINE_ENV, " INT8 ")
    assert load_engine(None, "bfloat16") == "int8"


@pytest.fixture(scope="module")
def int8() -> MiniLMEmbedder:
    if int8_support() is not None:
        pytest.skip(str(int8_support()))
    return MiniLMEmbedder(engine="int8")


def test_int8_vectors_are_near_float32s(int8: MiniLMEmbedder) -> None:
    vectors = int8.embed(QUERIES)
    assert int8.engine_in_use == "int8"
    assert isinstance(int8.compiled, Int8Encoder)
    exact = get_embedder("float32").embed(QUERIES)
    assert vectors.dtype == np.float32 and vectors.shape == (len(QUERIES), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (vectors * exact).sum(1).min() >= COSINE_FLOAT32


def _alone_and_padded(embedder: MiniLMEmbedder) -> float:
    """The least cosine between each query embedded alone and inside one padded batch with a
    long text (another length bucket, another batch size)."""
    alone = np.stack([embedder.embed([text])[0] for text in QUERIES])
    batched = embedder.embed([*QUERIES, LONG])[: len(QUERIES)]
    return float((alone * batched).sum(1).min())


def test_int8_vectors_do_not_depend_on_the_padded_batch(int8: MiniLMEmbedder) -> None:
    assert _alone_and_padded(int8) >= COSINE_PADDED


def test_shipped_vectors_do_not_depend_on_the_padded_batch() -> None:
    assert _alone_and_padded(get_embedder()) >= COSINE_PADDED


def test_without_the_int8_kernel_the_embedder_runs_eager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    embedder = MiniLMEmbedder(engine="int8")
    monkeypatch.setattr(embed_int8, "int8_support", lambda: "no int8 kernel (test)")
    vectors = embedder.embed(QUERIES[:2])
    assert embedder.engine_in_use == "eager"
    assert embedder.compiled is not None and "no int8 kernel" in str(embedder.compiled.broken)
    assert vectors.shape == (2, 384)


def test_a_cpu_without_vnni_is_refused_rather_than_run_wrong() -> None:
    """oneDNN limited to AVX2 (a CPU without VNNI) saturates int8 pair products in 16 bits:
    the probe must see it and say no."""
    import os
    import subprocess
    import sys

    code = "from trifecta.core.embed_int8 import int8_support; print(int8_support())"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "off by" in done.stdout or "Error" in done.stdout, done.stdout
