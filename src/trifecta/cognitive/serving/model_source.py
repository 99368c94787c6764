"""Where a replica's weights come from: a shipped tier, a local checkpoint, or dummy weights.

A replica loads its own model (in-process, or in a Ray Serve replica on another node), so the
source is a small picklable description rather than the model itself. `dummy` gives the tier's
architecture with seeded random weights, for measuring serving without trained weights (what
vLLM's `--load-format dummy` is for).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class ModelSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["tier", "checkpoint", "dummy"] = "tier"
    tier: str = "small"  # the shipped tier (for `checkpoint`: the tier it is priced as)
    path: str | None = None  # the checkpoint directory (kind `checkpoint`)
    seed: int = 0  # dummy weights

    def load(self) -> tuple[Any, Any]:
        """`(model, tokenizer)`, the model in eval mode on the CPU."""
        if self.kind == "checkpoint":
            from trifecta.cognitive.checkpoints import load_checkpoint
            from trifecta.core.errors import InvalidInput

            if not self.path:
                raise InvalidInput("a checkpoint source needs a path", field="model_path")
            return load_checkpoint(self.path)
        if self.kind == "dummy":
            import torch

            from trifecta.cognitive.canon_llama import CanonLlamaForCausalLM
            from trifecta.cognitive.checkpoints import build_tokenizer, llama_config
            from trifecta.cognitive.tiers import get_tier

            torch.manual_seed(self.seed)
            # The tier's own class: its Canon layers cost time in every step, as served.
            model = CanonLlamaForCausalLM(llama_config(get_tier(self.tier)))
            return model.eval(), build_tokenizer()
        from trifecta.cognitive.tiers import load_tier

        return load_tier(self.tier)

    def tokenizer_and_context(self) -> tuple[Any, int]:
        """The tokenizer and context length alone (what the API process needs to check and
        encode prompts when the weights live in replicas elsewhere)."""
        if self.kind == "checkpoint":
            from transformers import AutoConfig, AutoTokenizer

            from trifecta.core.errors import InvalidInput

            if not self.path:
                raise InvalidInput("a checkpoint source needs a path", field="model_path")
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                config = AutoConfig.from_pretrained(self.path, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise InvalidInput(
                    f"cannot read the checkpoint in {self.path}: {exc}", field="model_path"
                ) from None
            return tokenizer, int(config.max_position_embeddings)
        from trifecta.cognitive.checkpoints import build_tokenizer
        from trifecta.cognitive.tiers import get_tier

        return build_tokenizer(), get_tier(self.tier).max_positions
