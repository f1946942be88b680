"""``select_keep`` on CUDA: the per-row top-k keep mask and the compacted layout in two kernels.

Why Triton and not plain ops: the reference ranks each row by a stable sort and builds the
layout with a cumsum and a scatter (five kernels and a ``[B, L]`` int64 rank tensor); here the
rank is a count of the entries that beat each entry (``O(L^2)`` comparisons per row, a few
microseconds for L in the thousands, no sort), and the layout kernel writes ``idx`` /
``slot_live`` for the widest possible row (``L``) together with each row's width. The one host
read, ``max(width)``, is the compacted width ``W``: the sanctioned data-dependent size of a
pruned graph (:mod:`vtp_compile.kernels.select`). Not yet timed against the reference on a GPU
(no GPU was available when this was written); ``benchmarks/gpu_kernels.py`` does that.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import next_pow2
from ..select import min_width

_NEG = -3.0e38


@triton.jit
def _keep_kernel(key_ptr, vis_ptr, other_ptr, nkeep_ptr, keep_ptr, L,
                 BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """keep[b, i] = other[b, i] or (vis[b, i] and #{j visual beating i} < n_keep[b])."""
    b = tl.program_id(0)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    im = i < L
    row = b.to(tl.int64) * L
    ki = tl.load(key_ptr + row + i, mask=im, other=float("-inf"))
    vi = tl.load(vis_ptr + row + i, mask=im, other=0) != 0
    oi = tl.load(other_ptr + row + i, mask=im, other=0) != 0
    rank = tl.zeros([BLOCK_I], dtype=tl.int32)
    for j0 in range(0, L, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        jm = j < L
        kj = tl.load(key_ptr + row + j, mask=jm, other=float("-inf"))
        vj = tl.load(vis_ptr + row + j, mask=jm, other=0) != 0
        beats = (kj[None, :] > ki[:, None]) | ((kj[None, :] == ki[:, None]) & (j[None, :] < i[:, None]))
        beats = beats & vj[None, :]
        rank += tl.sum(beats.to(tl.int32), axis=1)
    n = tl.load(nkeep_ptr + b).to(tl.int32)
    keep = oi | (vi & (rank < n))
    tl.store(keep_ptr + row + i, keep.to(tl.int8), mask=im)


@triton.jit
def _layout_kernel(keep_ptr, idx_ptr, slot_ptr, width_ptr, L, BLOCK: tl.constexpr):
    """Row b: kept positions in order, then dead slots (index 0); width = kept + (kept < L)."""
    b = tl.program_id(0)
    row = b.to(tl.int64) * L
    carry = tl.zeros([], dtype=tl.int32)
    for s in range(0, L, BLOCK):
        p = s + tl.arange(0, BLOCK)
        m = p < L
        k = (tl.load(keep_ptr + row + p, mask=m, other=0) != 0).to(tl.int32)
        dest = carry + tl.cumsum(k, axis=0) - 1
        tl.store(idx_ptr + row + dest, p.to(tl.int64), mask=m & (k != 0))
        carry += tl.sum(k, axis=0)
    for s in range(0, L, BLOCK):
        p = s + tl.arange(0, BLOCK)
        m = p < L
        tl.store(slot_ptr + row + p, (p < carry).to(tl.int8), mask=m)
        tl.store(idx_ptr + row + p, tl.zeros([BLOCK], dtype=tl.int64), mask=m & (p >= carry))
    tl.store(width_ptr + b, carry + (carry < L).to(tl.int32))


def keep_mask(scores: torch.Tensor, visual_mask: torch.Tensor, live: torch.Tensor,
              n_keep: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``, as :func:`vtp_compile.kernels.select.keep_mask` (sync-free)."""
    B, L = visual_mask.shape
    vis = visual_mask & live
    finite = torch.nan_to_num(scores.float(), nan=_NEG, neginf=_NEG, posinf=-_NEG).clamp(min=_NEG)
    key = torch.where(vis, finite, torch.full_like(finite, float("-inf"))).contiguous()
    other = (live & ~visual_mask).to(torch.int8).contiguous()
    keep = torch.empty(B, L, dtype=torch.int8, device=scores.device)
    if B and L:
        bi = min(64, next_pow2(L))
        _keep_kernel[(B, triton.cdiv(L, bi))](key, vis.to(torch.int8).contiguous(), other,
                                             n_keep.to(torch.int64).contiguous(), keep, L,
                                             BLOCK_I=bi, BLOCK_J=min(128, next_pow2(L)))
    return keep.bool()


def layout_full(keep: torch.Tensor):
    """``(idx [B, L], slot_live [B, L], width [B])``: the compacted layout at the widest width
    ``L`` and each row's width (sync-free)."""
    B, L = keep.shape
    idx = torch.empty(B, L, dtype=torch.int64, device=keep.device)
    slot = torch.empty(B, L, dtype=torch.int8, device=keep.device)
    width = torch.empty(B, dtype=torch.int32, device=keep.device)
    if B and L:
        _layout_kernel[(B,)](keep.to(torch.int8).contiguous(), idx, slot, width, L,
                             BLOCK=min(1024, next_pow2(L)))
    return idx, slot.bool(), width


def select_keep(scores, visual_mask, live, n_keep, width: int = 0):
    """The CUDA kernel of ``vtp::select_keep``: one host read (the width ``W``), none when the
    graph gives a static ``width`` (checked on the device instead)."""
    idx, slot, widths = layout_full(keep_mask(scores, visual_mask, live, n_keep))
    if width:
        if widths.numel():
            torch._assert_async(widths.max() <= width,
                                "vtp: a batch keeps more positions than the graph's static width")
        W = width
    else:
        W = max(int(widths.max()) if widths.numel() else 0, min_width(idx.shape[1]), 1)   # the one host read
    if idx.shape[1] < W:     # L == 0: one dead slot
        idx = torch.zeros(idx.shape[0], W, dtype=idx.dtype, device=idx.device)
        slot = torch.zeros(idx.shape[0], W, dtype=torch.bool, device=idx.device)
    return idx[:, :W].contiguous(), slot[:, :W].contiguous()
