"""A checkpoint with a tied head stores it once: the loaded model reads it from the input
embeddings even when the loader left its own head untied (one CI run loaded a tier whose head
was uninitialised memory and answered with NaN logits)."""

from __future__ import annotations

import threading

import torch

from trifecta.cognitive.checkpoints import _check_head, load_checkpoint
from trifecta.cognitive.tiers import tier_dir


def test_an_untied_head_is_tied_back_to_the_embeddings() -> None:
    model, _ = load_checkpoint(tier_dir("small"))
    embeddings = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is embeddings
    garbage = torch.full_like(embeddings, float("nan"))
    model.get_output_embeddings().weight = torch.nn.Parameter(garbage)  # what the bad load left
    _check_head(model, tier_dir("small"))
    assert model.get_output_embeddings().weight is embeddings
    logits = model(torch.tensor([[1, 5, 9]])).logits
    assert bool(torch.isfinite(logits).all())


def test_tiers_loaded_from_several_threads_at_once_all_tie_their_heads() -> None:
    models: list[torch.nn.Module] = []

    def load() -> None:
        models.append(load_checkpoint(tier_dir("small"))[0])

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(models) == 3
    for model in models:
        head = model.get_output_embeddings().weight  # type: ignore[operator]
        assert head is model.get_input_embeddings().weight  # type: ignore[operator]
        assert bool(torch.isfinite(head).all())
