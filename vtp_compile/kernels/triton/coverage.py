"""``reserve_cover`` (DSTP) on CUDA: greedy farthest-point picks as one Triton program per row.

Why Triton: the same shape of loop as DivPrune's max-min selection (:mod:`.divprune`): each
pick is an argmax of the distance to the nearest kept token, then a running minimum with the
pick's distance row, ``n_reserve[b]`` rounds per row. As plain ops that is ~5 launches per pick
and a loop bound read on the host (``max(r)`` in the reference). Here the pairwise distances
stay one batched matmul (float64, as in the reference: duplicated tokens must tie exactly), and
one program per row keeps the running minimum in registers and loops ``r[b]`` times, read on
the device. Not timed on a GPU (none was available when this was written); a GPU benchmark
would time this launcher against the reference ``reserve_cover`` at V = 576.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import next_pow2

MAX_TOKENS = 8192   # one row's tokens held in one program's registers (float64)


@triton.jit
def _cover_kernel(dist_ptr, near_ptr, pool_ptr, active_ptr, r_ptr, out_ptr, L,
                  BLOCK: tl.constexpr):
    """out[b, j]: 3 on active, 2 - t / (L + 1) on the t-th pick, -1 elsewhere."""
    b = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    m = j < L
    row = b.to(tl.int64) * L
    pool = (tl.load(pool_ptr + row + j, mask=m, other=0) != 0) & m
    active = (tl.load(active_ptr + row + j, mask=m, other=0) != 0) & m
    near = tl.load(near_ptr + row + j, mask=m, other=0.0)
    rb = tl.load(r_ptr + b).to(tl.int32)
    out = tl.where(active, 3.0, -1.0).to(tl.float64)
    for t in range(rb):
        pick = tl.argmax(tl.where(pool, near, float("-inf")), axis=0)   # first max: lowest position
        hit = j == pick
        tf = (rb * 0 + t).to(tl.float64)          # the step as a tensor (an int in the interpreter)
        out = tl.where(hit, 2.0 - tf / (L + 1), out)   # in float64, then rounded: as the reference
        pool = pool & (j != pick)
        d = tl.load(dist_ptr + (row + pick) * L + j, mask=m, other=0.0)
        near = tl.minimum(near, d)
    tl.store(out_ptr + row + j, out.to(tl.float32), mask=m)


def reserve_cover(hidden: torch.Tensor, candidates: torch.Tensor, active: torch.Tensor,
                  n_reserve: torch.Tensor) -> torch.Tensor:
    """The CUDA kernel of ``vtp::reserve_cover`` (same result as the reference, no host read)."""
    from ..coverage import cover_setup
    B, L, _ = hidden.shape
    out = torch.empty(B, L, dtype=torch.float32, device=hidden.device)
    if B and L:
        if L > MAX_TOKENS:
            raise ValueError(f"vtp reserve_cover: {L} tokens per row; the CUDA kernel holds at "
                             f"most {MAX_TOKENS}")
        dist, near, pool, r = cover_setup(hidden, candidates, active, n_reserve)
        block = next_pow2(L)
        _cover_kernel[(B,)](dist.contiguous(), near.contiguous(), pool.to(torch.int8).contiguous(),
                            active.to(torch.int8).contiguous(), r.to(torch.int64).contiguous(),
                            out, L, BLOCK=block, num_warps=4 if block <= 2048 else 8)
    return out
