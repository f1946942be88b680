"""Nüwa's ops: region-separated anchor scores and the alignment-weighted aggregation."""
from __future__ import annotations

import math

import torch

from .ranks import inverse
from .registry import decomposed


def _grid_coords(V: int, grid_h: int, grid_w: int, device):
    """Per visual index of a row (images of ``grid_h*grid_w`` tokens back to back): image, row, col."""
    N = grid_h * grid_w
    i = torch.arange(V, device=device)
    local = i % N
    return i // N, local // grid_w, local % grid_w


def nuwa_anchor_scores(cls_attn: torch.Tensor, n_keep: torch.Tensor, grid_h: int, grid_w: int,
                       region: int) -> torch.Tensor:
    """Nüwa separation: ``[B, V]`` scores whose top ``n_keep[b]`` are row ``b``'s anchors.

    Each image's patch grid is cut into ``region x region`` blocks; the top
    ``n = ceil(n_keep[b] / blocks per row)`` tokens of each block by CLS attention (ties: lower
    index) are candidates. The score is minus the rank in the order (candidate first, CLS
    attention descending, index ascending), exact in float32, so the top ``n_keep`` are the
    best candidates (then, only if blocks are too small to supply them, the best others).
    """
    B, V = cls_attn.shape
    s = cls_attn.float()
    img, r, c = _grid_coords(V, grid_h, grid_w, s.device)
    per_row = -(-grid_w // region)
    block = (img * (-(-grid_h // region)) + r // region) * per_row + c // region     # [V]
    # the block count stays on the device (no host read): a 0-dim tensor
    n_blocks = block.amax() + 1 if V else torch.ones((), dtype=torch.long, device=s.device)
    n = -(-n_keep.to(s.device).long() // n_blocks)                                    # [B]
    idx = torch.arange(V, device=s.device)
    sj, si = s[:, None, :], s[:, :, None]                                            # [B, i, j]
    better = (sj > si) | ((sj == si) & (idx[None, :] < idx[:, None]))               # j before i
    cand = ((better & (block[None, :] == block[:, None])).sum(-1)) < n[:, None]             # [B, V]
    cj, ci = cand[:, None, :], cand[:, :, None]
    before = (cj & ~ci) | ((cj == ci) & better)
    return -before.sum(-1).float()


def nuwa_aggregate(hidden: torch.Tensor, visual_mask: torch.Tensor, keep_mask: torch.Tensor,
                   scores: torch.Tensor, upper: torch.Tensor, grid_h: int, grid_w: int,
                   distance: float, pillars: float) -> torch.Tensor:
    """Nüwa aggregation on the spliced embedding ``hidden`` ``[B, L, D]``.

    Anchors (visual and kept) are ranked by ``scores`` ``[B, L]``; the top
    ``ceil(pillars * anchors)`` are pillars and stay as they are. Every other anchor ``i`` becomes
    ``Σ_j W_ij x_j / Σ_j W_ij`` over the visual tokens ``j`` of its own image, with
    ``W_ij = ReLU(cos(u_i, u_j)) * (1 - min(d_ij / d_max, 1))``: ``u`` the vision tower's
    upper-layer features ``[B, V, Dv]``, ``d`` the patch-grid distance and
    ``d_max = sqrt(distance * ((grid_h-1)^2 + (grid_w-1)^2))`` (``W_ii = 1``). A row whose
    visual tokens are all anchors is returned unchanged.

    Batched and free of host reads (every row at once, fixed shapes), so the same code is the
    CPU kernel and the decomposition Inductor compiles on either device. Every row must hold
    exactly ``V`` visual tokens (checked on the device).
    """
    B, L, D = hidden.shape
    V = upper.shape[1]
    if V == 0:
        return hidden.clone()
    dev = hidden.device
    img, r, c = _grid_coords(V, grid_h, grid_w, dev)
    d = ((r[:, None] - r[None, :]).float() ** 2 + (c[:, None] - c[None, :]).float() ** 2).sqrt()
    d_max = math.sqrt(distance * ((grid_h - 1) ** 2 + (grid_w - 1) ** 2))
    prox = 1.0 - (d / d_max).clamp(max=1.0) if d_max > 0 else (d == 0).float()
    prox = prox * (img[:, None] == img[None, :]).float()                         # [V, V]
    torch._assert_async((visual_mask.sum(1) == V).all(),
                        f"vtp nuwa: every row must hold the {V} visual tokens of the vision internals")
    # each row's visual positions in order (visual first: a stable sort of "not visual")
    pos = torch.sort((~visual_mask).to(torch.uint8), dim=1, stable=True).indices[:, :V]   # [B, V]
    anchor = torch.gather(keep_mask, 1, pos)                                      # [B, V]
    n_anchor = anchor.sum(1)                                                      # [B]
    # rank among the anchors: score descending, ties by position (two stable sorts)
    s = torch.gather(scores, 1, pos).float()
    by_score = torch.sort(s, dim=1, descending=True, stable=True).indices
    by_anchor = torch.sort((~torch.gather(anchor, 1, by_score)).to(torch.uint8), dim=1,
                           stable=True).indices
    order = torch.gather(by_score, 1, by_anchor)
    rank = inverse(order)
    n_pillars = torch.ceil(n_anchor.double() * pillars).long()
    # rows that lost nothing (all anchors) or kept nothing are returned unchanged
    acts = (n_anchor > 0) & (n_anchor < V)
    collector = anchor & (rank >= n_pillars[:, None]) & acts[:, None]             # [B, V]
    u = torch.nn.functional.normalize(upper.float(), dim=-1)
    W = torch.relu(u @ u.transpose(1, 2)) * prox                                  # [B, V, V]
    W = torch.where(torch.eye(V, dtype=torch.bool, device=dev), torch.ones_like(W), W)
    x = torch.gather(hidden, 1, pos[..., None].expand(B, V, D)).float()           # [B, V, D]
    agg = (W @ x) / W.sum(-1, keepdim=True)
    new = torch.where(collector[..., None], agg, x).to(hidden.dtype)
    return hidden.scatter(1, pos[..., None].expand(B, V, D), new)


# ---- registration -------------------------------------------------------------------------------
@torch.library.custom_op("vtp::nuwa_anchor_scores", mutates_args=())
def _nuwa_anchor_scores(cls_attn: torch.Tensor, n_keep: torch.Tensor, grid_h: int, grid_w: int,
                        region: int) -> torch.Tensor:
    return nuwa_anchor_scores(cls_attn, n_keep, grid_h, grid_w, region)


@_nuwa_anchor_scores.register_fake
def _(cls_attn, n_keep, grid_h, grid_w, region):
    return torch.empty_like(cls_attn, dtype=torch.float32)


@torch.library.custom_op("vtp::nuwa_aggregate", mutates_args=())
def _nuwa_aggregate(hidden: torch.Tensor, visual_mask: torch.Tensor, keep_mask: torch.Tensor,
                    scores: torch.Tensor, upper: torch.Tensor, grid_h: int, grid_w: int,
                    distance: float, pillars: float) -> torch.Tensor:
    return nuwa_aggregate(hidden, visual_mask, keep_mask, scores, upper, grid_h, grid_w,
                          distance, pillars)


@_nuwa_aggregate.register_fake
def _(hidden, visual_mask, keep_mask, scores, upper, grid_h, grid_w, distance, pillars):
    return torch.empty_like(hidden)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
decomposed("nuwa_anchor_scores", nuwa_anchor_scores)
decomposed("nuwa_aggregate", nuwa_aggregate)
