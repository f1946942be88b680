"""Nüwa's ops: region-separated anchor scores and the alignment-weighted aggregation."""
from __future__ import annotations

import math

import torch


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
    n_blocks = int(block.max()) + 1 if V else 1
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
    """
    B, L, D = hidden.shape
    out = hidden.clone()
    V = upper.shape[1]
    if V == 0:
        return out
    img, r, c = _grid_coords(V, grid_h, grid_w, hidden.device)
    d = ((r[:, None] - r[None, :]).float() ** 2 + (c[:, None] - c[None, :]).float() ** 2).sqrt()
    d_max = math.sqrt(distance * ((grid_h - 1) ** 2 + (grid_w - 1) ** 2))
    prox = 1.0 - (d / d_max).clamp(max=1.0) if d_max > 0 else (d == 0).float()
    prox = prox * (img[:, None] == img[None, :]).float()                         # [V, V]
    u = torch.nn.functional.normalize(upper.float(), dim=-1)
    for b in range(B):
        pos = torch.nonzero(visual_mask[b]).flatten()
        if pos.numel() != V:
            raise ValueError(f"vtp nuwa: row {b} has {pos.numel()} visual tokens, the vision "
                             f"internals {V}")
        kept = keep_mask[b, pos]
        anchors = torch.nonzero(kept).flatten()
        if anchors.numel() in (0, V):
            continue        # nothing removed: nothing to recover (keep-all is the identity)
        # anchors ascend by position, so a stable sort breaks score ties towards the lower one
        order = torch.sort(scores[b, pos[anchors]].float(), descending=True, stable=True).indices
        collectors = anchors[order[math.ceil(pillars * anchors.numel()):]]
        if collectors.numel() == 0:
            continue
        W = torch.relu(u[b, collectors] @ u[b].T) * prox[collectors]             # [C, V]
        W[torch.arange(collectors.numel(), device=W.device), collectors] = 1.0   # self-weight 1
        x = hidden[b, pos].float()
        out[b, pos[collectors]] = ((W @ x) / W.sum(-1, keepdim=True)).to(hidden.dtype)
    return out


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
