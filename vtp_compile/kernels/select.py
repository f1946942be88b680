"""Selection and compaction ops: which positions survive a site, and moving tensors to and
from the compacted layout.

The compacted layout of a row is ``[kept positions in order][dead slots]``: every row of a
batch keeps its own number of tokens (rows differ in visual count, padding and budget), so the
common width ``W`` is the longest row's kept count (plus one dead slot in every row that lost a
position, see :mod:`vtp_compile.kernels.cache`) and the rest of each row is dead. ``W`` is data:
the one data-dependent size of a pruned graph (an unbacked SymInt, one host read per site,
no recompiles) — except where the graph's shapes fix it: a one-row batch whose visual count
the spliced features give (:func:`static_width`), where ``W`` is a plain int and everything
after the site compiles with static sizes. Dead slots sit at the end, so causal attention never lets a live query see one;
explicit masks are restricted with :func:`live_mask`.

Each op: a readable PyTorch reference (the CPU kernel), a ``torch.library`` registration and a
fake implementation for tracing.
"""
from __future__ import annotations

from typing import Optional

import torch

from .ranks import ranks
from .registry import decomposed, triton_kernel

_NEG = -3.0e38


# ---- references ---------------------------------------------------------------------------------
def keep_mask(scores: torch.Tensor, visual_mask: torch.Tensor, live: torch.Tensor,
              n_keep: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``: every live non-visual position plus the ``n_keep[b]`` live visual
    positions of row ``b`` with the highest score (ties and NaN: lower position first; NaN
    and -inf rank last)."""
    vis = visual_mask & live
    finite = torch.nan_to_num(scores.float(), nan=_NEG, neginf=_NEG, posinf=-_NEG).clamp(min=_NEG)
    key = torch.where(vis, finite, torch.full_like(finite, float("-inf")))
    rank = ranks(key, descending=True)
    return (live & ~visual_mask) | (vis & (rank < n_keep.to(rank.device)[:, None]))


def min_width(L) -> int:
    """The narrowest compacted width of an ``L``-wide sequence: 2 (1 when ``L`` < 2, or when a
    symbolic ``L`` is not known to be >= 2).

    Every other width a compacted graph meets is backed, and Dynamo treats a backed size as >= 2
    (it specialises 0 and 1). The compacted width is unbacked: a lowering that asks whether it
    is 1 (Inductor's bmm layout choice, a broadcast, a squeeze, a view's stride) cannot be
    answered and the compile fails. Width 1 happens only when every row kept nothing (all
    padding), so padding such a batch with one more dead slot costs nothing and lets the fake
    say ``W >= 2``: every 0/1 question about the width then has a static answer.
    """
    if isinstance(L, int):
        return min(2, L)
    from torch.fx.experimental.symbolic_shapes import statically_known_true
    return 2 if statically_known_true(L >= 2) else 1


def compact_layout(keep: torch.Tensor, live: torch.Tensor, width: int = 0):
    """``(idx [B, W], slot_live [B, W])`` for a keep mask: row ``b``'s kept positions in order,
    then dead slots (index 0). ``W`` = the longest row, counting one dead slot in every row that
    lost a live or padded position (decode graphs recognise compacted rows by it).

    ``width`` > 0: the graph's static width (:func:`static_width`), an upper bound on that ``W``:
    the layout is padded to it with dead slots; a batch that needs more raises."""
    B, L = keep.shape
    cnt = keep.sum(1)
    lost = cnt < L
    W = max(int((cnt + lost.long()).max()) if B else 0, min_width(L))
    if width:
        if W > width:
            raise RuntimeError(
                f"vtp: this batch keeps {W} positions, more than the {width} the graph was compiled "
                "for: its rows hold fewer visual tokens than the image features it was traced with "
                "(the placeholder tokens and the features do not match)")
        W = width
    dest = torch.where(keep, keep.long().cumsum(1) - 1, torch.full_like(cnt[:, None], W).expand(B, L))
    idx = torch.zeros(B, W + 1, dtype=torch.long, device=keep.device)
    idx.scatter_(1, dest, torch.arange(L, device=keep.device).expand(B, L))
    slot_live = torch.arange(W, device=keep.device)[None, :] < cnt[:, None]
    return idx[:, :W].contiguous(), slot_live


def static_width(L: int, n_visual: int, n_select: int) -> int:
    """The compacted width of a one-row batch of ``L`` positions of which ``n_visual`` are visual,
    keeping ``n_select`` visual ones: every non-visual position, the kept ones, and the dead slot
    of a row that lost a position. It bounds :func:`compact_layout`'s ``W`` from above whatever
    the row's padding (padding is non-visual and is evicted): a graph that knows it need not
    leave ``W`` to the data (see :func:`select_keep`)."""
    cnt = L - n_visual + min(max(n_select, 0), n_visual)
    return min(L, max(cnt + (cnt < L), min_width(L)))


def select_keep(scores: torch.Tensor, visual_mask: torch.Tensor, live: torch.Tensor,
                n_keep: torch.Tensor, width: int = 0):
    """Keep every live non-visual position and the top ``n_keep[b]`` live visual ones of each
    row; returns the compacted layout ``(idx [B, W] int64, slot_live [B, W] bool)``.

    scores ``[B, L]`` (any float), visual_mask / live bool ``[B, L]``, n_keep int64 ``[B]``.
    ``width`` > 0: ``W`` is that static width (dead slots pad the rows), not read from the data.
    """
    return compact_layout(keep_mask(scores, visual_mask, live, n_keep), live, width)


def gather_seq(x: torch.Tensor, idx: torch.Tensor, dim: int, batch_dim: int = 0) -> torch.Tensor:
    """``x`` with dimension ``dim`` indexed per batch row by ``idx`` ``[B, L']``.

    ``x`` may broadcast over batch (size 1 at ``batch_dim``); the result has size B there.
    """
    dim = dim % x.dim()
    batch_dim = batch_dim % x.dim()
    B = idx.shape[0]
    if x.shape[batch_dim] != B:
        shape = list(x.shape)
        shape[batch_dim] = B
        x = x.expand(shape)
    perm = [batch_dim, dim] + [d for d in range(x.dim()) if d not in (batch_dim, dim)]
    xp = x.permute(perm)
    ix = idx.view(B, idx.shape[1], *([1] * (xp.dim() - 2))).expand(B, idx.shape[1], *xp.shape[2:])
    out = torch.gather(xp, 1, ix)
    inv = [perm.index(d) for d in range(x.dim())]
    return out.permute(inv).contiguous()


def scatter_seq(base: torch.Tensor, src: torch.Tensor, idx: torch.Tensor,
                slot_live: torch.Tensor) -> torch.Tensor:
    """``base`` ``[B, L, ...]`` with positions ``idx`` ``[B, W]`` along dim 1 replaced by the
    live slots of ``src`` ``[B, W, ...]``; dead slots write nothing."""
    B, W = idx.shape
    L = base.shape[1]
    target = torch.where(slot_live, idx, torch.full_like(idx, L))        # dead -> spare row L
    padded = torch.cat([base, base[:, :1]], dim=1)
    ix = target.view(B, W, *([1] * (src.dim() - 2))).expand_as(src)
    return padded.scatter(1, ix, src.to(base.dtype))[:, :L].contiguous()


def live_mask(mask: Optional[torch.Tensor], slot_live: torch.Tensor) -> torch.Tensor:
    """An SDPA mask for the compacted layout: no query attends to a dead key except a dead query
    to itself (so no row is all-masked and no NaN reaches a dead slot's values).

    ``mask``: the gathered ``[B or 1, H or 1, W, W]`` bool or additive float mask, or None
    (every live key allowed). Returns the same dtype, ``[B, H or 1, W, W]``.
    """
    B, W = slot_live.shape
    key_ok = slot_live[:, None, None, :]
    own = torch.eye(W, dtype=torch.bool, device=slot_live.device)[None, None] & ~slot_live[:, None, :, None]
    if mask is None:
        return key_ok | own
    if mask.dtype == torch.bool:
        return (mask & key_ok) | own
    out = mask.masked_fill(~key_ok, float("-inf"))
    return out.masked_fill(own, 0.0)


# ---- registration -------------------------------------------------------------------------------
def _unbacked_width(ctx, upper):
    """A fresh unbacked SymInt for the compacted width, known to lie in
    ``[min_width(upper), upper]`` (see :func:`min_width`)."""
    lo = min_width(upper)
    shape_env = getattr(ctx, "_shape_env", None)
    if shape_env is None:   # no symbolic tracing context: fall back to the public helper
        return ctx.new_dynamic_size(min=lo, max=upper if isinstance(upper, int) else None)
    w = shape_env.create_unbacked_symint()
    torch._check(w >= lo)
    torch._check(w <= upper)
    return w


@torch.library.custom_op("vtp::select_keep", mutates_args=())
def _select_keep(scores: torch.Tensor, visual_mask: torch.Tensor, live: torch.Tensor,
                 n_keep: torch.Tensor, width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return select_keep(scores, visual_mask, live, n_keep, width)


@_select_keep.register_fake
def _(scores, visual_mask, live, n_keep, width=0):
    B, L = visual_mask.shape
    W = width if width else _unbacked_width(torch.library.get_ctx(), L)
    return (scores.new_empty((B, W), dtype=torch.int64),
            scores.new_empty((B, W), dtype=torch.bool))


@torch.library.custom_op("vtp::gather_seq", mutates_args=())
def _gather_seq(x: torch.Tensor, idx: torch.Tensor, dim: int, batch_dim: int) -> torch.Tensor:
    return gather_seq(x, idx, dim, batch_dim)


@_gather_seq.register_fake
def _(x, idx, dim, batch_dim):
    shape = list(x.shape)
    shape[dim % x.dim()] = idx.shape[1]
    shape[batch_dim % x.dim()] = idx.shape[0]
    return x.new_empty(shape)


@torch.library.custom_op("vtp::scatter_seq", mutates_args=())
def _scatter_seq(base: torch.Tensor, src: torch.Tensor, idx: torch.Tensor,
                 slot_live: torch.Tensor) -> torch.Tensor:
    return scatter_seq(base, src, idx, slot_live)


@_scatter_seq.register_fake
def _(base, src, idx, slot_live):
    return torch.empty_like(base)


@torch.library.custom_op("vtp::live_mask", mutates_args=())
def _live_mask(mask: Optional[torch.Tensor], slot_live: torch.Tensor) -> torch.Tensor:
    return live_mask(mask, slot_live)


@_live_mask.register_fake
def _(mask, slot_live):
    B, W = slot_live.shape
    if mask is None:
        return slot_live.new_empty((B, 1, W, W))
    return mask.new_empty((B, mask.shape[1], W, W))


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
decomposed("gather_seq", gather_seq)
decomposed("scatter_seq", scatter_seq)
decomposed("live_mask", live_mask)
triton_kernel("select_keep", "per-row top-k in position order; its width is the graph's one data-dependent size")

@torch.library.register_kernel("vtp::select_keep", "cuda")
def _select_keep_cuda(scores, visual_mask, live, n_keep, width=0):
    from .triton.select import select_keep   # on the first CUDA call: importing vtp_compile never imports triton
    return select_keep(scores, visual_mask, live, n_keep, width)
