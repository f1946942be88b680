"""``divprune_scores``: DivPrune's greedy max-min diversity selection, per row."""
from __future__ import annotations

import torch

from .registry import triton_kernel
from .select import compact_layout


def visual_layout(visual_mask: torch.Tensor):
    """``(vidx [B, Vmax], valid [B, Vmax])``: each row's visual positions in order, padded."""
    return compact_layout(visual_mask, torch.ones_like(visual_mask))


def divprune_scores(hidden: torch.Tensor, visual_mask: torch.Tensor, n_keep: torch.Tensor) -> torch.Tensor:
    """Greedy max-min diversity (distance 1 - cosine) among each row's visual tokens.

    The first pick is the token with the largest nearest-neighbour distance; each next pick
    maximises its distance to the nearest already-picked token (ties: lower position). Row ``b``
    picks ``min(n_keep[b], V_b)``. Returns ``[B, L]`` float32: a pick scores
    ``n_keep[b] - pick_order`` (> 0), every other position -1, so the top ``n_keep[b]`` of a row
    are exactly its picks.

    The distances are made exactly symmetric (the mean of ``d`` and its transpose): the two
    tokens of a mutual nearest pair have the same nearest-neighbour distance, and which one
    is picked first must follow the tie rule, not the last bit of a matrix product (``f @ f.T``
    rounds ``d[i, j]`` and ``d[j, i]`` differently, and a compiled tower's features differ from
    eager ones in that bit: the pick flipped between Inductor and eager on a drawn model).
    """
    B, L, _ = hidden.shape
    vidx, valid = visual_layout(visual_mask)
    vidx = torch.where(valid, vidx, torch.zeros_like(vidx))
    V = vidx.shape[1]
    dev = hidden.device
    feats = torch.gather(hidden.float(), 1, vidx[..., None].expand(B, V, hidden.shape[-1]))
    f = torch.nn.functional.normalize(feats, dim=-1)
    dist = 1.0 - f @ f.transpose(1, 2)                                   # [B, V, V]
    dist = (dist + dist.transpose(1, 2)) * 0.5      # exactly symmetric: see the docstring
    pair = valid[:, :, None] & valid[:, None, :] & ~torch.eye(V, dtype=torch.bool, device=dev)
    nn_dist = dist.masked_fill(~pair, float("inf")).amin(-1)
    nn_dist = torch.where(torch.isinf(nn_dist), torch.zeros_like(nn_dist), nn_dist)
    k = torch.minimum(n_keep.to(dev), valid.sum(1))
    out_v = torch.full((B, V), -1.0, dtype=torch.float32, device=dev)
    rows = torch.arange(B, device=dev)
    chosen = ~valid
    mind = torch.full((B, V), float("inf"), device=dev)
    pick = nn_dist.masked_fill(~valid, float("-inf")).argmax(-1)
    for t in range(int(k.max()) if B else 0):
        act = t < k
        chosen[rows[act], pick[act]] = True
        out_v[rows[act], pick[act]] = (k[act] - t).float()
        mind = torch.minimum(mind, dist[rows, pick])
        pick = mind.masked_fill(chosen, float("-inf")).argmax(-1)
    out = torch.full((B, L + 1), -1.0, dtype=torch.float32, device=dev)
    out.scatter_(1, torch.where(valid, vidx, torch.full_like(vidx, L)), out_v)
    return out[:, :L].contiguous()


@torch.library.custom_op("vtp::divprune_scores", mutates_args=())
def _divprune_scores(hidden: torch.Tensor, visual_mask: torch.Tensor, n_keep: torch.Tensor) -> torch.Tensor:
    return divprune_scores(hidden, visual_mask, n_keep)


@_divprune_scores.register_fake
def _(hidden, visual_mask, n_keep):
    return hidden.new_empty(visual_mask.shape, dtype=torch.float32)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
triton_kernel("divprune_scores", "greedy max-min diversity: a sequential loop per row")

@torch.library.register_kernel("vtp::divprune_scores", "cuda")
def _divprune_scores_cuda(hidden, visual_mask, n_keep):
    from .triton.divprune import divprune_scores   # on the first CUDA call: importing vtp_compile never imports triton
    return divprune_scores(hidden, visual_mask, n_keep)
