"""``dart_scores``: DART's duplication-aware selection around key-norm pivots, per row."""
from __future__ import annotations

import torch

from .ranks import ranks
from .registry import decomposed

_BIG = 3.0e38


def dart_scores(keys: torch.Tensor, hidden: torch.Tensor, visual_mask: torch.Tensor,
                live: torch.Tensor, n_keep: torch.Tensor, pivots: int) -> torch.Tensor:
    """DART (arXiv 2502.11494) for each row ``b`` keeping ``k = min(n_keep[b], V_b)`` tokens.

    1. Pivots by the L1 norm of the keys (``keys`` ``[B, Hkv, L, D]``, summed over heads): the
       top ``min(pivots, k)`` visual tokens, and the top ``pivots`` live text tokens after the
       row's last visual token (all live text tokens if none follows it).
    2. ``T = (k - P_img) // (P_img + P_txt)``; pivots in position order each take the ``T``
       remaining visual tokens least cosine-similar to them (``hidden`` ``[B, L, D]``), which
       leave the pool.
    3. The rest of ``k`` is topped up with the remaining visual tokens least similar to their
       most similar retained visual token.

    Returns ``[B, L]`` float32: 1 on the row's ``k`` retained visual tokens, -1 elsewhere.
    Ties: lower position first.

    Decomposed (:mod:`.lowering`): every step is plain tensor math on static shapes (stable
    sorts for ranks, one similarity row per pivot, masks instead of index lists), and the pivot
    loop has the static bound ``2 * pivots`` (a graph argument), so Inductor fuses it into a few
    kernels; no Triton kernel needed. Not timed on a GPU (none was available).
    """
    B, L = visual_mask.shape
    dev = hidden.device
    vis = visual_mask & live
    pos = torch.arange(L, device=dev).expand(B, L)
    V = vis.sum(1)
    k = torch.minimum(n_keep.to(dev), V)
    norm = keys.float().abs().sum(dim=(1, 3))[:, :L]                        # [B, L]
    # image pivots: top min(pivots, k) visual tokens by key norm
    p_img = torch.clamp(k, max=pivots)
    img_rank = ranks(torch.where(vis, -norm, torch.full_like(norm, _BIG)))
    is_img_piv = vis & (img_rank < p_img[:, None])
    # text pivots: live text after the last visual token, else any live text
    last_vis = torch.where(vis, pos, torch.full_like(pos, -1)).amax(1)
    text = live & ~visual_mask
    after = text & (pos > last_vis[:, None])
    pool_t = torch.where(after.any(1, keepdim=True), after, text)
    p_txt = torch.clamp(pool_t.sum(1), max=pivots)
    txt_rank = ranks(torch.where(pool_t, -norm, torch.full_like(norm, _BIG)))
    is_txt_piv = pool_t & (txt_rank < p_txt[:, None])
    n_piv = p_img + p_txt
    T = torch.where(n_piv > 0, (k - p_img) // n_piv.clamp(min=1), torch.zeros_like(k))
    # pivots in position order: the j-th pivot of each row
    is_piv = is_img_piv | is_txt_piv
    piv_order = ranks(torch.where(is_piv, pos.float(), torch.full_like(norm, _BIG)))
    h = torch.nn.functional.normalize(hidden.float(), dim=-1)
    chosen = is_img_piv
    pool = vis & ~is_img_piv
    rows = torch.arange(B, device=dev)
    for j in range(2 * pivots):
        has = n_piv > j
        p = torch.where(is_piv & (piv_order == j), pos, torch.zeros_like(pos)).amax(1)   # [B]
        cos = torch.einsum("bld,bd->bl", h, h[rows, p])
        rank = ranks(torch.where(pool, cos, torch.full_like(cos, _BIG)))
        take = pool & (rank < T[:, None]) & has[:, None]
        chosen = chosen | take
        pool = pool & ~take
    # top-up: the least duplicated remaining candidates
    sim = torch.einsum("bld,bmd->blm", h, h)
    worst = sim.masked_fill(~chosen[:, None, :], -_BIG).amax(-1)           # [B, L]
    worst = torch.where(chosen.any(1, keepdim=True), worst, torch.zeros_like(worst))
    rest = k - chosen.sum(1)
    rank = ranks(torch.where(pool, worst, torch.full_like(worst, _BIG)))
    chosen = chosen | (pool & (rank < rest[:, None]))
    return torch.where(chosen, torch.ones_like(norm), -torch.ones_like(norm))


@torch.library.custom_op("vtp::dart_scores", mutates_args=())
def _dart_scores(keys: torch.Tensor, hidden: torch.Tensor, visual_mask: torch.Tensor,
                 live: torch.Tensor, n_keep: torch.Tensor, pivots: int) -> torch.Tensor:
    return dart_scores(keys, hidden, visual_mask, live, n_keep, pivots)


@_dart_scores.register_fake
def _(keys, hidden, visual_mask, live, n_keep, pivots):
    return hidden.new_empty(visual_mask.shape, dtype=torch.float32)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
decomposed("dart_scores", dart_scores)
