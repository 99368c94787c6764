"""Hugging Face checkpoint directories: build, save and load them with one clear error.

The shipped tiers use the character vocabulary of `core/tokenizer.py`; it is exported here as a
`tokenizer.json` (the `tokenizers` library's word-level model over single characters) so that
`AutoTokenizer.from_pretrained` reads it like any checkpoint's tokenizer and encodes exactly as
`CharTokenizer(..., bos=True)` does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trifecta.core.errors import InvalidInput
from trifecta.core.model_loading import MODEL_LOAD_LOCK
from trifecta.core.tokenizer import BOS, EOS, MASK, PAD, SPECIALS, CharTokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from trifecta.cognitive.canon_llama import CanonLlamaConfig
    from trifecta.cognitive.tiers import TierSpec

REQUIRED_FILES = ("config.json",)


def tier_vocabulary() -> CharTokenizer:
    """The tiers' vocabulary: the alphabet, then byte tokens for any other character."""
    return CharTokenizer(byte_fallback=True)


def build_tokenizer() -> PreTrainedTokenizerBase:
    """The tiers' vocabulary as a `transformers` fast tokenizer (left padding, BOS added).

    A BPE model without merges over single characters, with byte fallback: a character outside
    the vocabulary becomes the `<0xNN>` tokens of its UTF-8 bytes, exactly as `CharTokenizer`
    encodes it (Llama's tokenizer handles unknown characters the same way)."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    chars = tier_vocabulary()
    backend = Tokenizer(models.BPE(vocab=dict(chars.ids), merges=[], byte_fallback=True))
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, chars.bos_id)]
    )
    backend.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        mask_token=MASK,
        padding_side="left",
        # "<eos>" typed in a prompt is text, not the end token (as CharTokenizer reads it).
        split_special_tokens=True,
    )


def llama_config(spec: TierSpec) -> CanonLlamaConfig:
    """The config of a shipped tier: a Llama with a Canon layer before each attention."""
    from trifecta.cognitive.canon_llama import CanonLlamaConfig

    chars = tier_vocabulary()
    return CanonLlamaConfig(
        canon_width=spec.canon_width,
        vocab_size=chars.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        initializer_range=spec.init_std,
        attention_bias=spec.attention_bias,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        bos_token_id=chars.bos_id,
        eos_token_id=chars.eos_id,
        pad_token_id=chars.pad_id,
    )


def save_checkpoint(
    model: PreTrainedModel, directory: Path, *, record: dict[str, Any] | None = None
) -> None:
    """Write `model` (safetensors), its tokenizer and greedy generation config to `directory`,
    plus `training.json` with how it was made. Writes to a sibling folder first and swaps it
    in, so that a failed save never leaves a half-written tier."""
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is on screen

    directory = Path(directory)
    staging = directory.with_name(directory.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    import copy

    import torch

    # Weights ship in float16 (half the bytes); `load_checkpoint` reads them back as float32.
    half: Any = copy.deepcopy(model)
    half.to(torch.float16).save_pretrained(staging, safe_serialization=True)
    build_tokenizer().save_pretrained(staging)
    chars = tier_vocabulary()
    GenerationConfig(
        do_sample=False,
        bos_token_id=chars.bos_id,
        eos_token_id=chars.eos_id,
        pad_token_id=chars.pad_id,
        max_new_tokens=8,
    ).save_pretrained(staging)
    for written in staging.iterdir():  # safetensors writes 0600; the assets are shared files
        written.chmod(0o644)
    if record is not None:
        (staging / "training.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    _swap_in(staging, directory)


def _swap_in(staging: Path, directory: Path) -> None:
    """Replace `directory` by the complete folder `staging`."""
    if directory.exists():
        for old in directory.iterdir():
            old.unlink()
        directory.rmdir()
    os.replace(staging, directory)


def promote(source: Path, destination: Path) -> None:
    """Copy the checkpoint in `source` over the one in `destination` (a shipped tier), once it
    has been checked to load; the files are written beside it first and swapped in whole."""
    import shutil

    load_checkpoint(source)  # one InvalidInput naming model_path when it is not a checkpoint
    if not (Path(source) / "model.safetensors").is_file():
        raise InvalidInput(f"{source} holds no model.safetensors", field="model_path")
    staging = destination.with_name(destination.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(source, staging)
    _swap_in(staging, destination)


def load_checkpoint(directory: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local Hugging Face directory, in eval mode, float32
    on the CPU. Anything wrong with the directory is one `InvalidInput` naming it."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise InvalidInput(f"no model directory at {path}", field="model_path")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise InvalidInput(
            f"{path} is not a Hugging Face checkpoint (missing {', '.join(missing)})",
            field="model_path",
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: weights are local
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    import trifecta.cognitive.canon_llama  # noqa: F401  (registers the tiers' model type)

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        with MODEL_LOAD_LOCK:  # from_pretrained is not thread-safe (core/model_loading.py)
            model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=torch.float32
            )
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(
            f"cannot load the checkpoint in {path}: {first}", field="model_path"
        ) from None
    _check_head(model, path)
    model.eval()
    if tokenizer.pad_token_id is None:  # many causal LMs ship without a pad token
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def _check_head(model: PreTrainedModel, path: Path) -> None:
    """A checkpoint that ties its output head to the input embeddings stores the head once; make
    sure the loaded model does read it from there (a head left untied holds whatever memory it
    was given: one CI run answered with NaN logits), and refuse non-finite weights."""
    import torch

    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    tied = bool(getattr(model.config, "tie_word_embeddings", False)) and head is not None
    if tied and head.weight is not embeddings.weight and not _stores_head(path):
        head.weight = embeddings.weight
    if head is not None and not bool(torch.isfinite(head.weight).all()):
        raise InvalidInput(f"the output head loaded from {path} is not finite", field="model_path")


def _stores_head(path: Path) -> bool:
    """Whether the checkpoint's safetensors hold an output head of their own."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names: list[str] = list(json.loads(index.read_text())["weight_map"])
    elif (path / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), framework="pt") as weights:
            names = list(weights.keys())
    else:
        return True  # another format: trust the loader's own tying
    return any(name.endswith("lm_head.weight") for name in names)
