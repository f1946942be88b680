"""``cluster_select_scores`` (TATCS) on CUDA: k-means rounds without a host read.

Why Triton for the assignment step: the reference sizes its centroid tensor by ``max(k)``
(a host read) and materialises every similarity ``[B, N, k]`` before an argmax. On CUDA the
centroid tensor has the static width ``N`` (clusters past a row's ``k`` are masked), and
:func:`assign` fuses the similarity tiles (``tl.dot`` in full fp32, no TF32: assignments must
match the reference's) with the running masked argmax, looping only over the row's ``k[b]``
live clusters, read on the device. Centroid updates and the per-cluster pick are scatter
reductions (plain ops). Not yet timed against the reference on a GPU (none was available when
this was written); ``benchmarks/gpu_kernels.py`` does that.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ties import SIM_STEPS
from . import next_pow2


@triton.jit
def _assign_kernel(f_ptr, c_ptr, k_ptr, out_ptr, N, D, stride_fb, stride_fn, stride_cb, stride_cn,
                   STEPS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """out[b, n] = argmax over live clusters c < k[b] of f[b, n] . cent[b, c], compared on the
    1/STEPS grid (ties: lower c)."""
    b = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < N
    kb = tl.load(k_ptr + b).to(tl.int32)
    best = tl.full([BLOCK_N], float("-inf"), tl.float32)
    arg = tl.zeros([BLOCK_N], dtype=tl.int32)
    fb = f_ptr + b.to(tl.int64) * stride_fb
    cb = c_ptr + b.to(tl.int64) * stride_cb
    for c0 in range(0, kb, BLOCK_K):
        c = c0 + tl.arange(0, BLOCK_K)
        cm = c < kb
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            dm = d < D
            ft = tl.load(fb + n[:, None] * stride_fn + d[None, :], mask=nm[:, None] & dm[None, :], other=0.0)
            ct = tl.load(cb + c[None, :] * stride_cn + d[:, None], mask=cm[None, :] & dm[:, None], other=0.0)
            acc += tl.dot(ft, ct, input_precision="ieee")
        acc = tl.where(cm[None, :], tl.floor(acc * STEPS + 0.5) / STEPS, float("-inf"))
        blk_best = tl.max(acc, axis=1)
        blk_arg = tl.argmax(acc, axis=1).to(tl.int32) + c0
        better = blk_best > best
        arg = tl.where(better, blk_arg, arg)
        best = tl.where(better, blk_best, best)
    tl.store(out_ptr + b.to(tl.int64) * N + n, arg.to(tl.int64), mask=nm)


def assign(f: torch.Tensor, cent: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` int64: each point's most similar live centroid (``f`` ``[B, N, D]``,
    ``cent`` ``[B, C, D]`` fp32, clusters ``c < k[b]`` live, ``k >= 1``)."""
    B, N, D = f.shape
    out = torch.zeros(B, N, dtype=torch.int64, device=f.device)
    if B and N:
        f, cent = f.contiguous(), cent.contiguous()
        bn = 32
        _assign_kernel[(B, triton.cdiv(N, bn))](f, cent, k.to(torch.int64).contiguous(), out, N, D,
                                               f.stride(0), f.stride(1), cent.stride(0), cent.stride(1),
                                               STEPS=SIM_STEPS, BLOCK_N=bn, BLOCK_K=32,
                                               BLOCK_D=min(64, max(16, next_pow2(D))))
    return out


def cluster_select_scores(features: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor,
                          k: torch.Tensor, iters: int) -> torch.Tensor:
    """The CUDA kernel of ``vtp::cluster_select_scores``: the reference's result with the
    centroid width fixed at ``N`` (no host read)."""
    B, N, D = features.shape
    dev = features.device
    s = scores.float()
    key = torch.where(valid, s, torch.full_like(s, float("-inf")))
    if N == 0:
        return key
    k = torch.clamp(torch.minimum(k.to(dev), valid.sum(1)), min=1)
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    init = torch.sort(key, dim=1, descending=True, stable=True).indices             # [B, N]
    cent = torch.gather(f, 1, init[..., None].expand(B, N, D))                      # [B, N, D]
    w = valid.float()
    fw = f * w[..., None]
    for it in range(iters + 1):
        a = assign(f, cent, k)                                                       # [B, N]
        if it == iters:
            break
        sums = torch.zeros_like(cent).scatter_add(1, a[..., None].expand(B, N, D), fw)
        count = torch.zeros(B, N, device=dev).scatter_add(1, a, w)
        cent = torch.where(count[..., None] > 0, torch.nn.functional.normalize(sums, dim=-1), cent)
    # the best-scored member of each non-empty cluster (ties: lower index)
    best = torch.full((B, N), float("-inf"), device=dev).scatter_reduce(
        1, a, key.masked_fill(~valid, float("-inf")), "amax", include_self=True)
    top = valid & (key == torch.gather(best, 1, a))
    pos = torch.arange(N, device=dev).expand(B, N)
    first = torch.full((B, N), N, dtype=torch.long, device=dev).scatter_reduce(
        1, a, torch.where(top, pos, torch.full_like(pos, N)), "amin", include_self=True)
    picked = top & (torch.gather(first, 1, a) == pos)
    return torch.where(picked, key + 2.0, key)
