"""``torch.library`` ops for the hot token-selection steps.

Each op has a PyTorch reference (the CPU path and the oracle for kernels) and a fake
implementation for tracing; a faster implementation can be registered per device later without
touching the passes that insert these ops.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from . import reference

_LIB = "vtp"
_log = logging.getLogger("vtp_compile")


@torch.library.custom_op(f"{_LIB}::attn_row_scores", mutates_args=())
def attn_row_scores(q: torch.Tensor, k: torch.Tensor, key_mask: Optional[torch.Tensor],
                    scale: float, query_index: int) -> torch.Tensor:
    return reference.attn_row_scores(q, k, key_mask, scale, query_index)


@attn_row_scores.register_fake
def _(q, k, key_mask, scale, query_index):
    return q.new_empty((q.shape[0], k.shape[2]), dtype=torch.float32)


@torch.library.custom_op(f"{_LIB}::select_keep", mutates_args=())
def select_keep(scores: torch.Tensor, visual_mask: torch.Tensor, n_visual: int,
                n_keep: int) -> torch.Tensor:
    return reference.select_keep(scores, visual_mask, n_visual, n_keep)


@select_keep.register_fake
def _(scores, visual_mask, n_visual, n_keep):
    B, L = visual_mask.shape
    kept = torch.sym_min(n_keep, n_visual)
    return scores.new_empty((B, L - n_visual + kept), dtype=torch.int64)


@torch.library.custom_op(f"{_LIB}::gather_seq", mutates_args=())
def gather_seq(x: torch.Tensor, idx: torch.Tensor, dim: int, batch_dim: int) -> torch.Tensor:
    return reference.gather_seq(x, idx, dim, batch_dim)


@gather_seq.register_fake
def _(x, idx, dim, batch_dim):
    shape = list(x.shape)
    shape[dim % x.dim()] = idx.shape[1]
    shape[batch_dim % x.dim()] = idx.shape[0]
    return x.new_empty(shape)


@torch.library.custom_op(f"{_LIB}::scatter_seq", mutates_args=())
def scatter_seq(base: torch.Tensor, src: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return reference.scatter_seq(base, src, idx)


@scatter_seq.register_fake
def _(base, src, idx):
    return torch.empty_like(base)


@torch.library.custom_op(f"{_LIB}::divprune_scores", mutates_args=())
def divprune_scores(features: torch.Tensor, n_keep: int) -> torch.Tensor:
    return reference.divprune_scores(features, n_keep)


@divprune_scores.register_fake
def _(features, n_keep):
    return features.new_empty(features.shape[:2], dtype=torch.float32)


@torch.library.custom_op(f"{_LIB}::check_left_padded", mutates_args=())
def check_left_padded(mask: torch.Tensor, mask4d: torch.Tensor) -> torch.Tensor:
    return reference.check_left_padded(mask, mask4d)


@check_left_padded.register_fake
def _(mask, mask4d):
    return torch.empty_like(mask4d)


# ---- DCP-Prune ----------------------------------------------------------------------------------
@torch.library.custom_op(f"{_LIB}::topk_mask", mutates_args=())
def topk_mask(scores: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    return reference.topk_mask(scores, valid, k)


@topk_mask.register_fake
def _(scores, valid, k):
    return torch.empty_like(valid, dtype=torch.bool)


@torch.library.custom_op(f"{_LIB}::dist_consistency", mutates_args=())
def dist_consistency(features: torch.Tensor, valid: torch.Tensor, kept: torch.Tensor,
                     tag: str) -> torch.Tensor:
    kappa = reference.dist_consistency(features, valid, kept)
    if _log.isEnabledFor(logging.DEBUG):   # per call, at run time (a sync; debug only)
        _log.debug("vtp %s: kappa per sample %s", tag, [round(v, 4) for v in kappa.tolist()])
    return kappa


@dist_consistency.register_fake
def _(features, valid, kept, tag):
    return features.new_empty((features.shape[0],), dtype=torch.float32)


@torch.library.custom_op(f"{_LIB}::cluster_select_scores", mutates_args=())
def cluster_select_scores(features: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor,
                          k: int, iters: int) -> torch.Tensor:
    return reference.cluster_select_scores(features, scores, valid, k, iters)


@cluster_select_scores.register_fake
def _(features, scores, valid, k, iters):
    return features.new_empty(features.shape[:2], dtype=torch.float32)


@torch.library.custom_op(f"{_LIB}::anchor_merge", mutates_args=())
def anchor_merge(hidden: torch.Tensor, visual_mask: torch.Tensor, keep_mask: torch.Tensor,
                 m: int) -> torch.Tensor:
    return reference.anchor_merge(hidden, visual_mask, keep_mask, m)


@anchor_merge.register_fake
def _(hidden, visual_mask, keep_mask, m):
    return torch.empty_like(hidden)


# ---- DSTP (runtime state in vtp_compile.shift_state) --------------------------------------------
@torch.library.custom_op(f"{_LIB}::dstp_begin", mutates_args=())
def dstp_begin(active: torch.Tensor, visual: torch.Tensor, keys0: torch.Tensor, k: int,
               tau: float, key: str) -> torch.Tensor:
    """Record a DSTP prefill's layout; returns the reserve mask ``visual & ~active``."""
    from .. import shift_state
    shift_state.begin(key, visual, active, keys0, k, tau)
    return visual & ~active


@dstp_begin.register_fake
def _(active, visual, keys0, k, tau, key):
    return torch.empty_like(visual)


@torch.library.custom_op(f"{_LIB}::dstp_columns", mutates_args=())
def dstp_columns(keys0: torch.Tensor, key: str) -> torch.Tensor:
    """``[B or 1, S]`` bool: the cache columns this decode step attends to before the site."""
    from .. import shift_state
    st = shift_state.lookup(key, keys0)
    return reference.shift_columns(st, keys0.shape[2], keys0.device).expand(keys0.shape[0], -1).clone()


@dstp_columns.register_fake
def _(keys0, key):
    return keys0.new_empty((keys0.shape[0], keys0.shape[2]), dtype=torch.bool)


@torch.library.custom_op(f"{_LIB}::dstp_update", mutates_args=())
def dstp_update(q: torch.Tensor, k: torch.Tensor, mask_row: Optional[torch.Tensor], scale: float,
                cols: torch.Tensor, key: str) -> torch.Tensor:
    """Score, measure the shift, maybe swap; ``[B, S]`` columns for the layers from the site on.

    ``cols`` is :func:`dstp_columns`' output: the data dependency orders this op after the
    step's validation, whose result it reuses."""
    from .. import shift_state
    return reference.shift_update(shift_state.current(key), q, k, mask_row, scale, cols)


@dstp_update.register_fake
def _(q, k, mask_row, scale, cols, key):
    return torch.empty_like(cols)


# ---- vision-encoder internals (vtp_compile.vision_context) -------------------------------------
@torch.library.custom_op(f"{_LIB}::vision_context", mutates_args=())
def vision_context(features: torch.Tensor, cls_attn: torch.Tensor, upper: torch.Tensor,
                   grid_h: int, grid_w: int) -> torch.Tensor:
    """A carrier: returns ``features`` (a copy) and brings the vision tower's internals into the
    graph, where the passes read them from this node's arguments and then remove it."""
    return features.clone()


@vision_context.register_fake
def _(features, cls_attn, upper, grid_h, grid_w):
    return torch.empty_like(features)


@torch.library.custom_op(f"{_LIB}::vision_lookup", mutates_args=())
def vision_lookup(features: torch.Tensor, grid_h: int, grid_w: int,
                  dv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The internals :func:`vtp_compile.vision_context.attach` recorded for exactly these
    projected ``features`` ``[n_img * N, D]``: ``(cls_attn [n_img, N], upper [n_img, N, dv])``."""
    from .. import vision_context
    rec = vision_context.last_record()
    if rec is None or rec.features.shape != features.shape or rec.grid != (grid_h, grid_w) \
            or not torch.equal(rec.features.to(features.device, features.dtype), features):
        raise ValueError("vtp: the vision internals recorded by vtp_compile.attach() do not belong "
                         "to the images of this call (features differ); call attach(model) before "
                         "compiling, set torch._dynamo.config.capture_scalar_outputs = True (else a "
                         "direct forward splits the vision tower from the decoder), and do not pass "
                         "mm_encoder_outputs computed elsewhere")
    dev = features.device
    return tuple(t.to(dev).clone(memory_format=torch.contiguous_format)
                 for t in (rec.cls_attn, rec.upper))


@vision_lookup.register_fake
def _(features, grid_h, grid_w, dv):
    n = features.shape[0] // (grid_h * grid_w)
    N = grid_h * grid_w
    return (features.new_empty((n, N), dtype=torch.float32),
            features.new_empty((n, N, dv), dtype=torch.float32))


# ---- Nüwa ---------------------------------------------------------------------------------------
@torch.library.custom_op(f"{_LIB}::nuwa_anchor_scores", mutates_args=())
def nuwa_anchor_scores(cls_attn: torch.Tensor, n_keep: int, grid_h: int, grid_w: int,
                       region: int) -> torch.Tensor:
    return reference.nuwa_anchor_scores(cls_attn, n_keep, grid_h, grid_w, region)


@nuwa_anchor_scores.register_fake
def _(cls_attn, n_keep, grid_h, grid_w, region):
    return torch.empty_like(cls_attn, dtype=torch.float32)


@torch.library.custom_op(f"{_LIB}::nuwa_aggregate", mutates_args=())
def nuwa_aggregate(hidden: torch.Tensor, visual_mask: torch.Tensor, keep_mask: torch.Tensor,
                   scores: torch.Tensor, upper: torch.Tensor, grid_h: int, grid_w: int,
                   distance: float, pillars: float) -> torch.Tensor:
    return reference.nuwa_aggregate(hidden, visual_mask, keep_mask, scores, upper, grid_h, grid_w,
                                    distance, pillars)


@nuwa_aggregate.register_fake
def _(hidden, visual_mask, keep_mask, scores, upper, grid_h, grid_w, distance, pillars):
    return torch.empty_like(hidden)
