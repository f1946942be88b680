"""A side channel for graphs that hold the splice but not the decoder, or the other way round.

Qwen2-VL, Qwen2.5-VL and GLM-4V's direct compiled forward arrives as separate graphs: one
splices the visual features into the embeddings, a later one runs the decoder layers from an
``inputs_embeds`` input and cannot tell which positions are visual. The splice graph records
``(embeddings, visual mask)`` with :func:`record_splice`; the decoder graph asks for the mask of
exactly its input embeddings with :func:`splice_lookup`, which returns "no visual tokens" for any
other input (nothing is pruned, never a wrong mask).
"""
from __future__ import annotations

import torch

from .registry import STATEFUL_TAGS, stateful

_RECORD: tuple[torch.Tensor, torch.Tensor] | None = None


@torch.library.custom_op("vtp::record_splice", mutates_args=(), **STATEFUL_TAGS)
def record_splice(embeds: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
    """Remember the spliced ``embeds`` ``[B, L, D]`` and its ``visual_mask`` ``[B, L]``;
    returns ``embeds`` (a copy)."""
    global _RECORD
    out = embeds.clone()
    _RECORD = (out, visual_mask.bool().clone())
    return out


@record_splice.register_fake
def _(embeds, visual_mask):
    return torch.empty_like(embeds)


@torch.library.custom_op("vtp::splice_lookup", mutates_args=(), **STATEFUL_TAGS)
def splice_lookup(embeds: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: the visual mask recorded for exactly these embeddings, else all False.

    Shapes, devices and dtypes are compared on the host (metadata); the values on the device
    (``rec == embeds``, all of it, as a device scalar that selects the mask): no host read."""
    rec = _RECORD
    B, L = embeds.shape[:2]
    if rec is not None and rec[0].shape == embeds.shape and rec[0].device == embeds.device \
            and rec[0].dtype == embeds.dtype:
        return rec[1] & (rec[0] == embeds).all()
    return torch.zeros(B, L, dtype=torch.bool, device=embeds.device)


@splice_lookup.register_fake
def _(embeds):
    return embeds.new_empty(embeds.shape[:2], dtype=torch.bool)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
stateful("record_splice", "records the spliced embeddings and visual mask for a later decoder graph")
stateful("splice_lookup", "returns the visual mask record_splice kept for exactly these embeddings")
