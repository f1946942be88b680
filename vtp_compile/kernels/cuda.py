"""CUDA kernels of the ops that stay ops (not decomposed; see :mod:`.lowering`).

Each registration imports its Triton launcher (:mod:`vtp_compile.kernels.triton`) on the first
CUDA call, so importing this module never imports triton. The CPU kernel of each op is its
PyTorch reference (registered in the op family's file).
"""
from __future__ import annotations

import torch

from . import cdpruner, coverage, dcp, divprune, pdrop, select  # noqa: F401  (the ops must be defined first)


@torch.library.register_kernel("vtp::select_keep", "cuda")
def _select_keep_cuda(scores, visual_mask, live, n_keep):
    from .triton.select import select_keep
    return select_keep(scores, visual_mask, live, n_keep)


@torch.library.register_kernel("vtp::divprune_scores", "cuda")
def _divprune_scores_cuda(hidden, visual_mask, n_keep):
    from .triton.divprune import divprune_scores
    return divprune_scores(hidden, visual_mask, n_keep)


@torch.library.register_kernel("vtp::cluster_select_scores", "cuda")
def _cluster_select_scores_cuda(features, scores, valid, k, iters):
    from .triton.dcp import cluster_select_scores
    return cluster_select_scores(features, scores, valid, k, iters)


@torch.library.register_kernel("vtp::dpp_greedy", "cuda")
def _dpp_greedy_cuda(kernel, valid, k):
    from .triton.cdpruner import dpp_greedy
    return dpp_greedy(kernel, valid, k)


@torch.library.register_kernel("vtp::reserve_cover", "cuda")
def _reserve_cover_cuda(hidden, candidates, active, n_reserve):
    from .triton.coverage import reserve_cover
    return reserve_cover(hidden, candidates, active, n_reserve)


@torch.library.register_kernel("vtp::pdrop_keep", "cuda")
def _pdrop_keep_cuda(n_orig, bounds, stage, budget, num, den):
    from .triton.pdrop import pdrop_keep
    return pdrop_keep(n_orig, bounds, stage, budget, num, den)
