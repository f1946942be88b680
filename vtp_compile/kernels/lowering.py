"""How each ``torch.ops.vtp`` op reaches Inductor.

* **decomposed**: plain tensor math. Its reference (functional and free of host reads) is
  handed to Inductor as a decomposition, so Inductor traces through it, fuses it with its
  neighbours and generates the kernels (Triton on CUDA, C++ on CPU). The op stays an op in the
  FX graph the passes work on (the passes find their own nodes by it) and for other inner
  backends.
* **triton**: steps plain ops express poorly (per-row top-k in position order with a
  data-dependent width, greedy max-min and farthest-point selection, greedy DPP MAP, k-means
  rounds, PDrop's bisection). The op stays a call; its CUDA kernel launches hand-written Triton kernels
  (:mod:`.cuda`), its CPU kernel is the reference.
* **stateful**: ops that read or write Python-side state (DSTP's runtime state, the vision
  internals recorded by ``attach``); they stay extern calls on every device and cannot be
  replayed by CUDA graphs (see :mod:`vtp_compile.shift_state`).

There is no "extern" class any more: every op the passes insert reaches Inductor either as
code it generates or as a declared Triton kernel (stateful ops aside). Where a method's op
mixes both (CDPruner: kernel matrix, then greedy MAP), its decomposition builds the plain part
and calls the Triton op for the rest. None of these choices was measured on a GPU (none was
available); each kernel's or decomposition's docstring says why it was made.

A new op must be classified here (``tests/kernels/test_lowering.py`` checks every registered
op). :func:`decompositions` is what :func:`vtp_compile.inner.lower` gives Inductor.
"""
from __future__ import annotations


import torch

from . import (cache, cdpruner, dart, dcp, nuwa, scores, select, sparsevlm,  # noqa: F401
               visionzip)



def _dist_consistency(features, valid, kept, tag):
    return dcp.dist_consistency(features, valid, kept)


def _attn_row_scores(q, k, key_mask, scale, query_index):
    return scores.attn_row_scores(q, k, key_mask, scale, query_index)


def _vision_context(features, cls_attn, upper, keys, received, grid_h, grid_w, layer):
    return features.clone()


DECOMPOSED = {
    "gather_seq": select.gather_seq,
    "scatter_seq": select.scatter_seq,
    "live_mask": select.live_mask,
    "mark_dead": cache.mark_dead,
    "to_positional": cache.to_positional,
    "decode_mask": cache.decode_mask,
    "positional_mask": cache.positional_mask,
    "attn_row_scores": _attn_row_scores,
    "topk_mask": dcp.topk_mask,
    "dist_consistency": _dist_consistency,
    "anchor_merge": dcp.anchor_merge,
    "nuwa_anchor_scores": nuwa.nuwa_anchor_scores,
    "nuwa_aggregate": nuwa.nuwa_aggregate,
    "vision_context": _vision_context,   # a carrier the passes remove; never left in a graph
    # the baselines' schedules, scores and merges (each reference's docstring: why)
    "sparsevlm_keep": sparsevlm.sparsevlm_keep,
    "sparsevlm_scores": sparsevlm.sparsevlm_scores,
    "sparsevlm_recycle_rank": sparsevlm.recycle_rank,
    "sparsevlm_recycle_merge": sparsevlm.recycle_merge,
    "dart_scores": dart.dart_scores,
    "visionzip_scores": visionzip.visionzip_scores,
    "visionzip_merge": visionzip.visionzip_merge_decomposed,
    "cdpruner_scores": cdpruner.cdpruner_scores_decomposed,   # calls the Triton op dpp_greedy
}
TRITON = {
    "select_keep": "per-row top-k in position order; its width is the graph's one data-dependent size",
    "divprune_scores": "greedy max-min diversity: a sequential loop per row",
    "cluster_select_scores": "k-means rounds (TATCS): fused similarity + masked argmax",
    "dpp_greedy": "CDPruner's greedy DPP MAP: one Cholesky row per pick, sequential per row",
    "reserve_cover": "DSTP's coverage reserve: greedy farthest points, sequential per row",
    "pdrop_keep": "PDrop's schedule: 60 bisection halvings per row (unrolled, Inductor's inliner "
                  "blows up on the chain)",
}
STATEFUL = {
    "dstp_begin": "records DSTP's prefill layout in Python-side state",
    "dstp_columns": "reads DSTP's runtime state",
    "dstp_update": "reads and updates DSTP's runtime state",
    "vision_lookup": "returns the vision internals attach() recorded for this call",
    "record_splice": "records the spliced embeddings and visual mask for a later decoder graph",
    "splice_lookup": "returns the visual mask record_splice kept for exactly these embeddings",
}


def decompositions() -> dict:
    """Inductor's default decomposition table plus the decomposed vtp ops."""
    from torch._inductor.decomposition import select_decomp_table
    table = dict(select_decomp_table())
    # the same table whatever the log level: the generated code never depends on logging
    # (dist_consistency logs κ per call at debug level only where it runs as an op: the eager
    # and aot_eager inner backends)
    for name, fn in DECOMPOSED.items():
        table[getattr(torch.ops.vtp, name).default] = fn
    return table
