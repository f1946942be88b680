"""``divprune_scores`` on CUDA: the greedy max-min loop as one Triton program per row.

Why Triton: the selection is sequential (each pick depends on the last), ``n_keep`` rounds of
an argmax and a running minimum. As plain ops that is ~5 kernel launches per pick, and the loop
bound is data (``max(n_keep)``, a host read in the reference). Here the pairwise distances are
one batched matmul (cuBLAS), and one program per row keeps the running minimum in registers and
loops ``n_keep[b]`` times, reading one distance row per pick: no launch per pick, no host read.
Not yet timed against the reference on a GPU (none was available when this was written);
``benchmarks/gpu_kernels.py`` does that.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import next_pow2

MAX_TOKENS = 16384   # one row's tokens held in one program's registers


@triton.jit
def _greedy_kernel(dist_ptr, nn_ptr, valid_ptr, k_ptr, out_ptr, L, BLOCK: tl.constexpr):
    """out[b, j] = k[b] - t for the t-th pick of row b, -1 for the rest."""
    b = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    m = j < L
    row = b.to(tl.int64) * L
    valid = (tl.load(valid_ptr + row + j, mask=m, other=0) != 0) & m
    nn = tl.load(nn_ptr + row + j, mask=m, other=0.0)
    kb = tl.load(k_ptr + b).to(tl.int32)
    chosen = valid == 0
    mind = tl.full([BLOCK], float("inf"), tl.float32)
    out = tl.full([BLOCK], -1.0, tl.float32)
    pick = tl.argmax(tl.where(valid, nn, float("-inf")), axis=0)
    for t in range(kb):
        hit = j == pick
        chosen = chosen | hit
        out = tl.where(hit, (kb - t).to(tl.float32), out)
        d = tl.load(dist_ptr + (row + pick) * L + j, mask=m, other=float("inf"))
        mind = tl.minimum(mind, d)
        pick = tl.argmax(tl.where(chosen, float("-inf"), mind), axis=0)
    tl.store(out_ptr + row + j, out, mask=m)


def greedy(dist: torch.Tensor, nn_dist: torch.Tensor, valid: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The greedy loop on precomputed ``dist`` ``[B, L, L]`` (fp32), ``nn_dist`` ``[B, L]``,
    ``valid`` ``[B, L]`` bool and ``k`` ``[B]`` picks: ``[B, L]`` float32 pick scores."""
    B, L = valid.shape
    out = torch.empty(B, L, dtype=torch.float32, device=dist.device)
    if B and L:
        if L > MAX_TOKENS:
            raise ValueError(f"vtp divprune: {L} tokens per row; the CUDA kernel holds at most "
                             f"{MAX_TOKENS}")
        block = next_pow2(L)
        _greedy_kernel[(B,)](dist.contiguous(), nn_dist.contiguous(), valid.to(torch.int8).contiguous(),
                             k.to(torch.int64).contiguous(), out, L, BLOCK=block,
                             num_warps=4 if block <= 2048 else 8)
    return out


def divprune_scores(hidden: torch.Tensor, visual_mask: torch.Tensor, n_keep: torch.Tensor) -> torch.Tensor:
    """The CUDA kernel of ``vtp::divprune_scores`` (same result as the reference, no host read).

    Each row's visual positions come first in a width-``L`` layout (a stable sort of "not
    visual"), so every shape is static; positions past a row's visual count are invalid.
    """
    B, L, D = hidden.shape
    dev = hidden.device
    order = torch.sort((~visual_mask).to(torch.uint8), dim=1, stable=True).indices   # [B, L]
    n_vis = visual_mask.sum(1)
    valid = torch.arange(L, device=dev)[None, :] < n_vis[:, None]
    feats = torch.gather(hidden.float(), 1, order[..., None].expand(B, L, D))
    f = torch.nn.functional.normalize(feats, dim=-1)
    dist = 1.0 - f @ f.transpose(1, 2)                                                # [B, L, L]
    dist = (dist + dist.transpose(1, 2)) * 0.5          # exactly symmetric, as the reference
    pair = valid[:, :, None] & valid[:, None, :] & ~torch.eye(L, dtype=torch.bool, device=dev)
    nn_dist = dist.masked_fill(~pair, float("inf")).amin(-1)
    nn_dist = torch.where(torch.isinf(nn_dist), torch.zeros_like(nn_dist), nn_dist)
    k = torch.minimum(n_keep.to(dev), n_vis)
    out_v = greedy(dist, nn_dist, valid, k)
    out = torch.full((B, L + 1), -1.0, dtype=torch.float32, device=dev)
    out = out.scatter(1, torch.where(valid, order, torch.full_like(order, L)), out_v)
    return out[:, :L].contiguous()
