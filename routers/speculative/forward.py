"""Forward passes over an in-process causal LM, whole or truncated to its first N layers.

Self-speculation drafts with the target's own first N decoder layers, then the final norm and
the LM head (an "early exit"). Running them straight from the loaded model, rather than loading
a truncated second copy, keeps one set of weights in memory; the draft keeps its own KV cache,
whose N layers are shaped like the target's first N.
"""

from __future__ import annotations

from typing import Any

import torch


class CausalLM:
    """``logits(ids, cache)``: logits of each new position, extending ``cache`` in place.

    ``num_layers=None`` runs the whole model through its own ``forward``; a number runs the
    decoder stack's first layers only (Llama / Qwen2-style models: ``model.model`` with
    ``embed_tokens``, ``rotary_emb``, ``layers``, ``norm``, and ``model.lm_head``).
    """

    def __init__(self, model: Any, num_layers: int | None = None) -> None:
        total = len(model.model.layers)
        if num_layers is not None and not 1 <= num_layers <= total:
            raise ValueError(f"num_layers must be in [1, {total}], got {num_layers}")
        self.model = model
        self.num_layers = None if num_layers == total else num_layers
        self.total_layers = total

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache()

    def logits(self, ids: list[int], cache: Any, *, last_only: bool = False) -> torch.Tensor:
        """(len(ids), vocab) float32 logits (or (1, vocab) with ``last_only``)."""
        input_ids = torch.tensor([ids], dtype=torch.long)
        keep = 1 if last_only else 0  # 0 = every position (transformers' logits_to_keep)
        if self.num_layers is None:
            out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=keep)
            logits: torch.Tensor = out.logits[0]
            return logits.float()
        hidden = self._truncated_hidden(input_ids, cache)
        if last_only:
            hidden = hidden[:, -1:, :]
        result: torch.Tensor = self.model.lm_head(hidden)[0]
        return result.float()

    def _truncated_hidden(self, input_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        from transformers.masking_utils import create_causal_mask

        body = self.model.model
        embeds = body.embed_tokens(input_ids)
        past = cache.get_seq_length()
        position_ids = (torch.arange(input_ids.shape[1]) + past).unsqueeze(0)
        mask = create_causal_mask(
            config=body.config, inputs_embeds=embeds, attention_mask=None,
            past_key_values=cache, position_ids=position_ids,
        )
        position_embeddings = body.rotary_emb(embeds, position_ids=position_ids)
        hidden = embeds
        for layer in body.layers[: self.num_layers]:
            hidden = layer(
                hidden, attention_mask=mask, position_embeddings=position_embeddings,
                position_ids=position_ids, past_key_values=cache, use_cache=True,
            )
        normed: torch.Tensor = body.norm(hidden)
        return normed
