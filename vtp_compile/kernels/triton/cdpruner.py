"""``dpp_greedy`` (CDPruner) on CUDA: the greedy DPP MAP as one Triton program per row.

Why Triton: each pick depends on the last (an argmax over the marginal gains, then one
Cholesky row ``e = (L_j - C^T c_j) / d_j`` and ``d^2 -= e^2``), ``k[b]`` rounds per row. As plain
ops that is ~8 kernel launches per pick and the loop bound is data (``max(k)``, a host read in
the reference); unrolled for a static bound it would be hundreds of nodes for 64-192 picks.
Here one program per row keeps the gains ``d^2`` in registers, writes its Cholesky rows to a
``[B, V, V]`` scratch buffer and loops ``k[b]`` times, read on the device: no launch per pick, no
host read. The projection ``C^T c_j`` accumulates the earlier rows in pick order (the reference
sums the same products; the two agree exactly in fp32 unless gains tie within rounding). The
kernel matrix itself is plain tensor math (Inductor builds it: see
:mod:`vtp_compile.kernels.cdpruner`). Not timed on a GPU (none was available when this was
written); a GPU benchmark would time this launcher against the reference ``dpp_greedy`` at
LLaVA's V = 576 and k = 64 / 192.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import next_pow2

MAX_TOKENS = 8192   # one row's tokens held in one program's registers


@triton.jit
def _dpp_kernel(ker_ptr, valid_ptr, k_ptr, c_ptr, out_ptr, V, BLOCK: tl.constexpr):
    """out[b, j] = k[b] - t for the t-th pick of row b, -1 for the rest; c: [B, V, V] scratch."""
    b = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    m = j < V
    base = b.to(tl.int64) * V * V
    valid = (tl.load(valid_ptr + b.to(tl.int64) * V + j, mask=m, other=0) != 0) & m
    kb = tl.load(k_ptr + b).to(tl.int32)
    diag = tl.load(ker_ptr + base + j * V + j, mask=m, other=0.0)
    d2 = tl.where(valid, diag, float("-inf"))
    out = tl.full([BLOCK], -1.0, tl.float32)
    for t in range(kb):
        pick = tl.argmax(d2, axis=0)                       # first max: lowest index
        hit = j == pick
        dj = tl.max(tl.where(hit, d2, float("-inf")), axis=0)
        ok = dj > 1e-12
        proj = tl.zeros([BLOCK], tl.float32)
        for s in range(t):
            # each thread reads back the elements it stored (same layout); c_j comes from the
            # loaded row by a reduction, not by a scalar load that could race the store
            crow = tl.load(c_ptr + base + s * V + j, mask=m, other=0.0)
            cj = tl.sum(tl.where(hit, crow, 0.0), axis=0)
            proj = proj + crow * cj
        lj = tl.load(ker_ptr + base + pick * V + j, mask=m, other=0.0)
        e = (lj - proj) / tl.sqrt(tl.where(ok, dj, 1.0))
        e = tl.where(ok, e, 0.0)
        tl.store(c_ptr + base + t * V + j, e, mask=m)
        d2 = d2 - e * e
        out = tl.where(hit, (kb - t).to(tl.float32), out)
        d2 = tl.where(hit, float("-inf"), d2)
    tl.store(out_ptr + b.to(tl.int64) * V + j, out, mask=m)


def dpp_greedy(kernel: torch.Tensor, valid: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The CUDA kernel of ``vtp::dpp_greedy``: ``kernel`` ``[B, V, V]``, ``valid`` ``[B, V]``
    bool, ``k`` ``[B]`` picks (at most the row's valid count); ``[B, V]`` float32 pick scores."""
    B, V = valid.shape
    out = torch.empty(B, V, dtype=torch.float32, device=kernel.device)
    if B and V:
        if V > MAX_TOKENS:
            raise ValueError(f"vtp dpp_greedy: {V} tokens per row; the CUDA kernel holds at most "
                             f"{MAX_TOKENS}")
        scratch = torch.empty(B, V, V, dtype=torch.float32, device=kernel.device)
        block = next_pow2(V)
        _dpp_kernel[(B,)](kernel.float().contiguous(), valid.to(torch.int8).contiguous(),
                          k.to(torch.int64).contiguous(), scratch, out, V, BLOCK=block,
                          num_warps=4 if block <= 2048 else 8)
    return out
