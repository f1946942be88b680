"""``attn_row_scores``: the attention one query row pays every key, from q and k.

FastV, DCP-Prune, Nüwa (stage 2) and DSTP score visual tokens with it; it needs no attention
probabilities from the model, so any attention implementation (SDPA, flash) works.
"""
from __future__ import annotations

from typing import Optional

import torch

from .registry import decomposed


def attn_row_scores(q: torch.Tensor, k: torch.Tensor, key_mask: Optional[torch.Tensor],
                    scale: float, query_index: int = -1) -> torch.Tensor:
    """Head-mean attention paid by one query row to every key.

    ``score[b, s] = mean_h softmax_s(scale * q[b, h, query_index] . k[b, h // rep, s] + bias[b, s])``

    q: ``[B, H, Lq, D]``; k: ``[B, Hkv, S, D]`` with ``H % Hkv == 0`` (GQA); key_mask: ``None``,
    a bool ``[B or 1, S]`` (True = may attend) or an additive float ``[B or 1, S]``.
    Returns float32 ``[B, S]``.
    """
    B, H, _, D = q.shape
    hkv = k.shape[1]
    qr = q[:, :, query_index, :].float()                       # [B, H, D]
    kk = k.float()
    if hkv != H:
        kk = kk.repeat_interleave(H // hkv, dim=1)
    logits = torch.einsum("bhd,bhsd->bhs", qr, kk) * scale     # [B, H, S]
    if key_mask is not None:
        km = key_mask.expand(B, logits.shape[-1])
        if km.dtype == torch.bool:
            logits = logits.masked_fill(~km[:, None, :], float("-inf"))
        else:
            logits = logits + km[:, None, :].float()
    return torch.softmax(logits, dim=-1).mean(dim=1)


@torch.library.custom_op("vtp::attn_row_scores", mutates_args=())
def _attn_row_scores(q: torch.Tensor, k: torch.Tensor, key_mask: Optional[torch.Tensor],
                     scale: float, query_index: int) -> torch.Tensor:
    return attn_row_scores(q, k, key_mask, scale, query_index)


@_attn_row_scores.register_fake
def _(q, k, key_mask, scale, query_index):
    return q.new_empty((q.shape[0], k.shape[2]), dtype=torch.float32)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
def _attn_row_scores_decomposed(q, k, key_mask, scale, query_index):
    return attn_row_scores(q, k, key_mask, scale, query_index)


decomposed("attn_row_scores", _attn_row_scores_decomposed)
