"""``pdrop_keep`` on CUDA: PDrop's per-row bisection as one Triton loop, many rows per program.

Why Triton and not a decomposition: the schedule solves ``avg(lam) = target`` per row by 60
bisection halvings (float64), each halving reading the last one's bounds twice. Unrolled into
plain ops that chain is ~10 pointwise nodes per halving and stage, and Inductor's inliner
re-walks the shared ``lo``/``hi`` reads of every halving: the compile of a PDrop graph did not
finish within 20 minutes on CPU (measured, torch 2.13). Here each program keeps its rows'
``lo``/``hi`` in registers and loops; the stage bounds are scalar arguments (no host read, no
host-to-device copy). The arithmetic is the reference's, in the same order and in float64, launched with
``enable_fp_fusion=False`` (no fused multiply-add), so the counts equal the reference's. Not
timed on a GPU (none was available): it is ``[B]`` scalar work, far below one launch's cost.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..pdrop import ITERS

BLOCK = 128


MAX_STAGES = 7


@triton.jit
def _stage(avg, p, mid, d):
    p = p * mid
    return avg + d.to(tl.float64) * p, p


@triton.jit
def _bisect_kernel(v_ptr, out_ptr, B, b0, total, d1, d2, d3, d4, d5, d6, d7, budget, num, den,
                   stage, NB: tl.constexpr, ITERS_C: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[b] = max(1, floor(v * lam^stage)), lam solving the layer-average target of row b.
    ``d_s`` = bounds[s] - bounds[s - 1] (``NB`` bounds: the stage layers, then the depth)."""
    i = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = i < B
    v = tl.load(v_ptr + i, mask=m, other=0).to(tl.float64)
    zero = tl.zeros([BLOCK_C], tl.float64)
    if budget > 0:
        target = (zero + budget.to(tl.float64)) / tl.maximum(v, 1.0)
    else:
        target = zero + num.to(tl.float64) / den.to(tl.float64)
    lo = zero
    hi = zero + 1.0
    for _ in range(ITERS_C):
        mid = (lo + hi) * 0.5
        avg = zero + b0.to(tl.float64)
        p = zero + 1.0
        avg, p = _stage(avg, p, mid, d1)
        if NB > 2:
            avg, p = _stage(avg, p, mid, d2)
        if NB > 3:
            avg, p = _stage(avg, p, mid, d3)
        if NB > 4:
            avg, p = _stage(avg, p, mid, d4)
        if NB > 5:
            avg, p = _stage(avg, p, mid, d5)
        if NB > 6:
            avg, p = _stage(avg, p, mid, d6)
        if NB > 7:
            avg, p = _stage(avg, p, mid, d7)
        ok = avg / total.to(tl.float64) <= target
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid)
    lam = tl.where(target >= 1.0, 1.0, lo)
    p = zero + 1.0
    for _ in range(stage):
        p = p * lam
    n = tl.maximum(tl.floor(v * p), 1.0)
    tl.store(out_ptr + i, n.to(tl.int64), mask=m)


def pdrop_keep(n_orig: torch.Tensor, bounds: list[int], stage: int, budget: int, num: int,
               den: int) -> torch.Tensor:
    """The CUDA kernel of ``vtp::pdrop_keep`` (same counts as the reference, no host read, no
    host-to-device copy: the bounds are scalar arguments)."""
    B = n_orig.shape[0]
    out = torch.empty(B, dtype=torch.int64, device=n_orig.device)
    if not 2 <= len(bounds) <= MAX_STAGES + 1:
        raise ValueError(f"vtp pdrop: {len(bounds) - 1} stages; the CUDA kernel takes 1 to {MAX_STAGES}")
    if B:
        d = [int(bounds[s]) - int(bounds[s - 1]) for s in range(1, len(bounds))]
        d += [0] * (MAX_STAGES - len(d))
        _bisect_kernel[(triton.cdiv(B, BLOCK),)](
            n_orig.to(torch.int64).contiguous(), out, B, int(bounds[0]), int(bounds[-1]), *d,
            int(budget), int(num), int(den) or 1, int(stage), NB=len(bounds), ITERS_C=ITERS,
            BLOCK_C=BLOCK, enable_fp_fusion=False)
    return out
