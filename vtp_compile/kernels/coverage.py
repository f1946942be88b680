"""``reserve_cover``: DSTP's coverage reserve, the tokens farthest from what is already kept."""
from __future__ import annotations

import torch

from .registry import triton_kernel


def cover_setup(hidden: torch.Tensor, candidates: torch.Tensor, active: torch.Tensor,
                n_reserve: torch.Tensor):
    """``(dist [B, L, L] float64, near [B, L], pool [B, L], r [B])``: the cosine distances, each
    token's distance to the nearest active one (2 in a row without any), the candidates left and
    each row's pick count. Shared by the reference and the CUDA kernel; reads nothing on the host."""
    dev = hidden.device
    # float64: duplicated tokens (tiled images) tie exactly, and ties go to the lower position
    f = torch.nn.functional.normalize(hidden.double(), dim=-1)
    dist = 1.0 - f @ f.transpose(1, 2)                                    # [B, L, L]
    pool = candidates & ~active
    near = dist.masked_fill(~active[:, None, :], float("inf")).amin(-1)  # to the active set
    near = torch.where(active.any(1, keepdim=True), near, torch.full_like(near, 2.0))
    r = torch.minimum(n_reserve.to(dev), pool.sum(1))
    return dist, near, pool, r


def reserve_cover(hidden: torch.Tensor, candidates: torch.Tensor, active: torch.Tensor,
                  n_reserve: torch.Tensor) -> torch.Tensor:
    """Greedy farthest-point picks, per row, among ``candidates & ~active``.

    Each pick maximises its cosine distance (``1 - cos`` of ``hidden`` ``[B, L, D]``) to the
    nearest token of ``active`` ∪ earlier picks (ties: lower position); row ``b`` picks
    ``min(n_reserve[b], its candidates left)``. Returns ``[B, L]`` float32: 3 on ``active``,
    ``2 - t / (L + 1)`` on the ``t``-th pick (so picks rank in order, below the active set),
    -1 elsewhere.

    A Triton kernel on CUDA (:mod:`.triton.coverage`, with why); this reference on CPU.
    """
    B, L, _ = hidden.shape
    dev = hidden.device
    dist, near, pool, r = cover_setup(hidden, candidates, active, n_reserve)
    out = torch.where(active, torch.full_like(near, 3.0), torch.full_like(near, -1.0)).float()
    rows = torch.arange(B, device=dev)
    steps = int(r.max()) if B else 0
    for t in range(steps):
        go = t < r
        pick = near.masked_fill(~pool, float("-inf")).argmax(-1)            # first max: lower position
        out[rows[go], pick[go]] = 2.0 - t / (L + 1)
        pool[rows[go], pick[go]] = False
        near = torch.where(go[:, None], torch.minimum(near, dist[rows, pick]), near)
    return out


@torch.library.custom_op("vtp::reserve_cover", mutates_args=())
def _reserve_cover(hidden: torch.Tensor, candidates: torch.Tensor, active: torch.Tensor,
                   n_reserve: torch.Tensor) -> torch.Tensor:
    return reserve_cover(hidden, candidates, active, n_reserve)


@_reserve_cover.register_fake
def _(hidden, candidates, active, n_reserve):
    return hidden.new_empty(candidates.shape, dtype=torch.float32)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
triton_kernel("reserve_cover", "DSTP's coverage reserve: greedy farthest points, sequential per row")

@torch.library.register_kernel("vtp::reserve_cover", "cuda")
def _reserve_cover_cuda(hidden, candidates, active, n_reserve):
    from .triton.coverage import reserve_cover   # on the first CUDA call: importing vtp_compile never imports triton
    return reserve_cover(hidden, candidates, active, n_reserve)
