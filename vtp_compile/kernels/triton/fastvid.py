"""``fastvid_density`` and ``fastvid_targets`` on CUDA: FastVID without ``[B, L, L]`` matrices.

Why Triton: the reference (kernels/fastvid.py) groups frames on the host (their sizes are
data); as plain ops without that grouping every token's distances to the whole row would be
materialised, ``B x L x L`` float64: 1 GB for 16 frames of 1024 tokens at batch 8. Here each
program takes ``BI`` tokens and walks the span of positions of their frames (two ``[B, L]``
tensors computed on the device, ``_spans``) in tiles of ``BJ`` tokens, with the squared
distances as exact float64 differences:

1. ``_knn_kernel``: the 4 smallest ``d^2 / D`` among the frame's pool tokens (itself included)
   kept sorted in registers across tiles, then their mean ``m`` (``rho = exp(-m)``);
2. ``_peak_kernel``: ``delta``, the distance to the nearest token of the frame with a smaller
   ``m`` (denser), or the frame's largest distance for its densest token.

``_targets_kernel`` does the same for the merge: each removed token's most cosine-similar
context token of its segment (a running first maximum across tiles of the segment's positions),
instead of a ``[B, L, L]`` float32 similarity matrix.

The launchers read nothing on the host. Not yet timed on a GPU (none was available when this
was written); ``benchmarks/gpu_kernels.py`` does that.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..fastvid import KNN

BI, BJ, BD = 16, 32, 16


@triton.jit
def _tile(x_ptr, row, i, j, mi, mj, D, SQDIST: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr,
          BD: tl.constexpr):
    """``[BI, BJ]`` of tokens ``i`` and ``j`` of one row: float64 squared distances (``SQDIST``),
    else float32 dot products."""
    acc = tl.zeros([BI, BJ], dtype=tl.float64 if SQDIST else tl.float32)
    for d0 in range(0, D, BD):
        dd = d0 + tl.arange(0, BD)
        md = dd < D
        xi = tl.load(x_ptr + (row + i[:, None]) * D + dd[None, :], mask=mi[:, None] & md[None, :], other=0.0)
        xj = tl.load(x_ptr + (row + j[:, None]) * D + dd[None, :], mask=mj[:, None] & md[None, :], other=0.0)
        if SQDIST:
            diff = xi.to(tl.float64)[:, None, :] - xj.to(tl.float64)[None, :, :]
            acc += tl.sum(diff * diff, axis=2)
        else:
            acc += tl.sum(xi[:, None, :] * xj[None, :, :], axis=2)
    return acc


@triton.jit
def _rows(mask_ptr, key_ptr, lo_ptr, hi_ptr, L, BI: tl.constexpr):
    """This program's ``BI`` tokens of row ``program_id(0)``: ``(row offset, i, in range, in the
    mask, key)`` and the span ``[start, stop)`` of the frames or segments of the masked ones."""
    row = tl.program_id(0).to(tl.int64) * L
    i = tl.program_id(1) * BI + tl.arange(0, BI)
    mi = i < L
    on = (tl.load(mask_ptr + row + i, mask=mi, other=0) != 0) & mi
    key = tl.load(key_ptr + row + i, mask=mi, other=-1)
    start = tl.min(tl.load(lo_ptr + row + i, mask=on, other=L), axis=0)
    stop = tl.max(tl.load(hi_ptr + row + i, mask=on, other=0), axis=0)
    return row, i, mi, on, key, start, stop


@triton.jit
def _cols(mask_ptr, key_ptr, row, j0, stop, BJ: tl.constexpr):
    """The tile of ``BJ`` tokens from ``j0``: ``(j, in range, in the mask, key)``."""
    j = j0 + tl.arange(0, BJ)
    mj = j < stop
    on = (tl.load(mask_ptr + row + j, mask=mj, other=0) != 0) & mj
    key = tl.load(key_ptr + row + j, mask=mj, other=-2)
    return j, mj, on, key


@triton.jit
def _knn_kernel(x_ptr, f_ptr, pool_ptr, lo_ptr, hi_ptr, m_ptr, L, D,
                KNN: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr):
    row, i, mi, pi, fi, start, stop = _rows(pool_ptr, f_ptr, lo_ptr, hi_ptr, L, BI)
    inf = float("inf")
    k0 = tl.full([BI], inf, tl.float64)
    k1 = tl.full([BI], inf, tl.float64)
    k2 = tl.full([BI], inf, tl.float64)
    k3 = tl.full([BI], inf, tl.float64)
    for j0 in range(start, stop, BJ):
        j, mj, pj, fj = _cols(pool_ptr, f_ptr, row, j0, stop, BJ)
        ok = pi[:, None] & pj[None, :] & (fi[:, None] == fj[None, :])
        v = tl.where(ok, _tile(x_ptr, row, i, j, mi, mj, D, True, BI, BJ, BD) / D, inf)
        for _ in tl.static_range(KNN):            # the tile's KNN smallest, merged into k0..k3
            t = tl.min(v, axis=1)
            at = tl.argmin(v, axis=1)
            v = tl.where(tl.arange(0, BJ)[None, :] == at[:, None], inf, v)
            lo0 = tl.minimum(k0, t)
            t = tl.maximum(k0, t)
            k0 = lo0
            lo1 = tl.minimum(k1, t)
            t = tl.maximum(k1, t)
            k1 = lo1
            lo2 = tl.minimum(k2, t)
            t = tl.maximum(k2, t)
            k2 = lo2
            k3 = tl.minimum(k3, t)
    n = (k0 < inf).to(tl.float64) + (k1 < inf).to(tl.float64) + (k2 < inf).to(tl.float64) \
        + (k3 < inf).to(tl.float64)
    total = tl.where(k0 < inf, k0, 0.0) + tl.where(k1 < inf, k1, 0.0) + tl.where(k2 < inf, k2, 0.0) \
        + tl.where(k3 < inf, k3, 0.0)
    tl.store(m_ptr + row + i, total / tl.maximum(n, 1.0), mask=mi)


@triton.jit
def _peak_kernel(x_ptr, f_ptr, pool_ptr, lo_ptr, hi_ptr, m_ptr, delta_ptr, L, D,
                 BI: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr):
    row, i, mi, pi, fi, start, stop = _rows(pool_ptr, f_ptr, lo_ptr, hi_ptr, L, BI)
    m_i = tl.load(m_ptr + row + i, mask=mi, other=0.0)
    inf = float("inf")
    delta = tl.full([BI], inf, tl.float64)
    widest = tl.zeros([BI], dtype=tl.float64)
    for j0 in range(start, stop, BJ):
        j, mj, pj, fj = _cols(pool_ptr, f_ptr, row, j0, stop, BJ)
        m_j = tl.load(m_ptr + row + j, mask=mj, other=0.0)
        ok = pi[:, None] & pj[None, :] & (fi[:, None] == fj[None, :])
        d = tl.sqrt(_tile(x_ptr, row, i, j, mi, mj, D, True, BI, BJ, BD) / D)
        denser = ok & (m_j[None, :] < m_i[:, None])
        delta = tl.minimum(delta, tl.min(tl.where(denser, d, inf), axis=1))
        widest = tl.maximum(widest, tl.max(tl.where(ok, d, 0.0), axis=1))
    tl.store(delta_ptr + row + i, tl.where(delta < inf, delta, widest), mask=mi)


def _spans(seg: torch.Tensor, member: torch.Tensor):
    """``(lo, hi)`` ``[B, L]`` int32: the first and one past the last position of the members
    of each position's group (``seg``: a frame or a segment id per position; a group's members
    need not be contiguous, e.g. text between a segment's frames)."""
    B, L = seg.shape
    pos = torch.arange(L, device=seg.device).expand(B, L)
    key = torch.where(member, seg, torch.zeros_like(seg)).clamp(min=0, max=L - 1)
    lo = torch.full((B, L), L, dtype=torch.long, device=seg.device).scatter_reduce(
        1, key, torch.where(member, pos, torch.full_like(pos, L)), reduce="amin")
    hi = torch.zeros(B, L, dtype=torch.long, device=seg.device).scatter_reduce(
        1, key, torch.where(member, pos + 1, torch.zeros_like(pos)), reduce="amax")
    return lo.gather(1, key).to(torch.int32).contiguous(), hi.gather(1, key).to(torch.int32).contiguous()


def fastvid_density(hidden: torch.Tensor, frames: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """The CUDA kernel of ``vtp::fastvid_density`` (kernels/fastvid.py): ``[B, L]`` float64."""
    B, L, D = hidden.shape
    out = torch.zeros(B, L, dtype=torch.float64, device=hidden.device)
    if not (B and L and D):
        return out
    x = hidden.float().contiguous()
    f = frames.to(torch.int64).contiguous()
    p = pool.to(torch.int8).contiguous()
    lo, hi = _spans(f, pool)
    m = torch.empty(B, L, dtype=torch.float64, device=hidden.device)
    delta = torch.empty(B, L, dtype=torch.float64, device=hidden.device)
    grid = (B, triton.cdiv(L, BI))
    _knn_kernel[grid](x, f, p, lo, hi, m, L, D, KNN=KNN, BI=BI, BJ=BJ, BD=BD, num_warps=4)
    _peak_kernel[grid](x, f, p, lo, hi, m, delta, L, D, BI=BI, BJ=BJ, BD=BD, num_warps=4)
    return torch.where(pool, torch.exp(-m) * delta, out)


@triton.jit
def _targets_kernel(x_ptr, seg_ptr, src_ptr, tgt_ptr, lo_ptr, hi_ptr, out_ptr, L, D,
                    BI: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr):
    row, i, mi, si, gi, start, stop = _rows(src_ptr, seg_ptr, lo_ptr, hi_ptr, L, BI)
    best = tl.full([BI], float("-inf"), tl.float32)
    at = tl.full([BI], -1, tl.int64)
    for j0 in range(start, stop, BJ):
        j, mj, tj, gj = _cols(tgt_ptr, seg_ptr, row, j0, stop, BJ)
        ok = si[:, None] & tj[None, :] & (gi[:, None] == gj[None, :])
        sim = tl.where(ok, _tile(x_ptr, row, i, j, mi, mj, D, False, BI, BJ, BD), float("-inf"))
        top = tl.max(sim, axis=1)
        first = tl.min(tl.where(sim == top[:, None], j[None, :], L), axis=1).to(tl.int64)
        take = (top > best) & (tl.max(ok.to(tl.int32), axis=1) > 0)     # later tiles win only when higher
        best = tl.where(take, top, best)
        at = tl.where(take, first, at)
    tl.store(out_ptr + row + i, at, mask=mi)


def fastvid_targets(hidden: torch.Tensor, seg: torch.Tensor, source: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
    """The CUDA kernel of ``vtp::fastvid_targets`` (kernels/fastvid.py): ``[B, L]`` int64."""
    B, L, D = hidden.shape
    out = torch.full((B, L), -1, dtype=torch.long, device=hidden.device)
    if not (B and L and D):
        return out
    xn = torch.nn.functional.normalize(hidden.float(), dim=-1).contiguous()
    g = seg.to(torch.int64).contiguous()
    lo, hi = _spans(g, source | target)
    _targets_kernel[(B, triton.cdiv(L, BI))](xn, g, source.to(torch.int8).contiguous(),
                                            target.to(torch.int8).contiguous(), lo, hi, out, L, D,
                                            BI=BI, BJ=BJ, BD=BD, num_warps=4)
    return out
