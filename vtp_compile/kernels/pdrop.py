"""``pdrop_keep``: PDrop's per-row stage counts for a layer-average budget."""
from __future__ import annotations

import torch

from .registry import triton_kernel

ITERS = 60


def solve_lambda(target: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """``lam`` in [0, 1] whose layer average ``(l_1 + sum_s (l_{s+1} - l_s) lam^s) / L`` is
    ``target`` (float64 ``[B]``; ``bounds`` = stage layers then ``L``), by 60 halvings; 0 where
    even ``lam = 0`` averages more, 1 where ``target >= 1``."""
    L = float(bounds[-1])
    lo = torch.zeros_like(target)
    hi = torch.ones_like(target)
    for _ in range(ITERS):
        mid = (lo + hi) * 0.5
        avg = torch.full_like(mid, float(bounds[0]))
        p = torch.ones_like(mid)
        for s in range(1, len(bounds)):
            p = p * mid
            avg = avg + float(bounds[s] - bounds[s - 1]) * p
        ok = avg / L <= target
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return torch.where(target >= 1.0, torch.ones_like(lo), lo)


def pdrop_keep(n_orig: torch.Tensor, bounds: list[int], stage: int, budget: int, num: int,
               den: int) -> torch.Tensor:
    """Stage ``stage``'s (1-based) kept count per row, ``max(1, floor(V lam^stage))`` int64 ``[B]``.

    ``V = n_orig`` (each row's visual count before the first stage); the layer-average target is
    ``budget / V`` (``budget`` > 0) or ``num / den``. ``bounds``: the stage layers, then the
    model's depth ``L``.

    A Triton kernel on CUDA (:mod:`.triton.pdrop`, with why: not a decomposition, as unrolled
    halvings stall Inductor's compile); this reference on CPU."""
    v = n_orig.to(torch.float64)
    if budget > 0:
        target = torch.full_like(v, float(budget)) / v.clamp(min=1.0)
    else:
        target = torch.full_like(v, num / den)
    lam = solve_lambda(target, bounds)
    p = torch.ones_like(lam)
    for _ in range(stage):
        p = p * lam
    return torch.floor(v * p).clamp(min=1.0).to(torch.int64)


@torch.library.custom_op("vtp::pdrop_keep", mutates_args=())
def _pdrop_keep(n_orig: torch.Tensor, bounds: list[int], stage: int, budget: int, num: int,
                den: int) -> torch.Tensor:
    return pdrop_keep(n_orig, bounds, stage, budget, num, den)


@_pdrop_keep.register_fake
def _(n_orig, bounds, stage, budget, num, den):
    return torch.empty_like(n_orig, dtype=torch.int64)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
triton_kernel("pdrop_keep", "PDrop's schedule: 60 bisection halvings per row (unrolled, Inductor's inliner "
       "blows up on the chain)")

@torch.library.register_kernel("vtp::pdrop_keep", "cuda")
def _pdrop_keep_cuda(n_orig, bounds, stage, budget, num, den):
    from .triton.pdrop import pdrop_keep   # on the first CUDA call: importing vtp_compile never imports triton
    return pdrop_keep(n_orig, bounds, stage, budget, num, den)
