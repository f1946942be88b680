"""VisionZip's ops: dominant + contextual selection, and the contextual merge by key similarity."""
from __future__ import annotations

import torch

from .ranks import ranks
from .registry import decomposed
from .divprune import visual_layout

DOMINANT, TARGET, DROPPED = 2.0, 1.0, -1.0


def contextual_count(k: torch.Tensor, num: int, den: int) -> torch.Tensor:
    """Contextual tokens of ``k`` kept: ``round(k * num / den)`` (halves up), in integers
    (5/32: 10 of 64, 20 of 128, 30 of 192, the paper's splits)."""
    return torch.minimum((2 * k * num + den) // (2 * den), k)


def visionzip_scores(dominant: torch.Tensor, visual_mask: torch.Tensor, n_keep: torch.Tensor,
                     ctx_num: int, ctx_den: int) -> torch.Tensor:
    """Row ``b`` keeps ``k = min(n_keep[b], V_b)`` visual tokens: ``c`` contextual
    (:func:`contextual_count`) and ``d = k - c`` dominant.

    Dominant: the top ``d`` by ``dominant`` ``[B, L]`` (CLS attention or attention received;
    ties: lower position). Contextual targets: the other visual tokens in position order, every
    ``step = max(1, R // c)``-th from the first (``R`` of them), the first ``c`` of those.
    Returns ``[B, L]`` float32: dominant 2, target 1, every other position -1, so the top
    ``k`` are exactly dominant ∪ targets and the merge can tell them apart.

    Decomposed (:mod:`.lowering`; this function is the decomposition): one stable sort for the
    dominant ranks, a cumulative sum for the contextual ordinals, masks; no Triton kernel
    needed. Not timed on a GPU (none was available).
    """
    B, L = visual_mask.shape
    dev = visual_mask.device
    V = visual_mask.sum(1)
    k = torch.minimum(n_keep.to(dev).long(), V)
    c = contextual_count(k, ctx_num, ctx_den)
    d = k - c
    s = dominant.float().masked_fill(~visual_mask, float("-inf"))
    rank = ranks(s, descending=True)
    dom = visual_mask & (rank < d[:, None])
    rest = visual_mask & ~dom
    R = V - d
    step = torch.clamp(R // torch.clamp(c, min=1), min=1)
    ordinal = rest.long().cumsum(1) - 1
    target = rest & (ordinal % step[:, None] == 0) & (ordinal // step[:, None] < c[:, None])
    out = torch.full((B, L), DROPPED, dtype=torch.float32, device=dev)
    out = out.masked_fill(target, TARGET)
    return out.masked_fill(dom, DOMINANT)


def visionzip_merge(hidden: torch.Tensor, visual_mask: torch.Tensor, keep_mask: torch.Tensor,
                    scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Every removed visual token joins the contextual target (score 1, kept) whose key is the
    most cosine-similar to its own (``keys`` ``[B, L, hd]``; ties: lower position); each target
    with members becomes ``x_t + mean(x_members)`` (the official code's merge). Dominant tokens
    and everything else are returned unchanged."""
    B, L, D = hidden.shape
    vidx, valid = visual_layout(visual_mask)
    vidx = torch.where(valid, vidx, torch.zeros_like(vidx))
    V = vidx.shape[1]
    if V == 0:
        return hidden.clone()
    g = lambda t: torch.gather(t, 1, vidx)                                   # noqa: E731
    tgt = valid & g(keep_mask) & (g(scores) == TARGET)
    src = valid & ~g(keep_mask)
    kv = torch.gather(keys.float(), 1, vidx[..., None].expand(B, V, keys.shape[-1]))
    kv = torch.nn.functional.normalize(kv, dim=-1)
    sim = (kv @ kv.transpose(1, 2)).masked_fill(~tgt[:, None, :], float("-inf"))   # [B, src, tgt]
    assign = torch.nn.functional.one_hot(sim.argmax(-1), V).to(torch.float32)
    assign = assign * (src & tgt.any(1, keepdim=True))[..., None].float()          # [B, V, V]
    x = torch.gather(hidden.float(), 1, vidx[..., None].expand(B, V, D))
    count = assign.sum(1)                                                          # [B, V] per target
    agg = (assign.transpose(1, 2) @ x) / count.clamp(min=1)[..., None]
    merged = (x + agg).to(hidden.dtype)
    upd = tgt & (count > 0)
    out = hidden.clone()
    pos = torch.where(upd, vidx, torch.full_like(vidx, L))
    ext = torch.cat([out, out.new_zeros(B, 1, D)], 1)
    ext.scatter_(1, pos[..., None].expand(B, V, D), torch.where(upd[..., None], merged, out.new_zeros(())))
    return ext[:, :L].contiguous()


def visionzip_merge_decomposed(hidden: torch.Tensor, visual_mask: torch.Tensor,
                               keep_mask: torch.Tensor, scores: torch.Tensor,
                               keys: torch.Tensor) -> torch.Tensor:
    """:func:`visionzip_merge` as Inductor compiles it (:mod:`.lowering`): the same assignment
    and merge over all ``L`` positions with masks, instead of the reference's compacted visual
    layout (whose width is a host read). Plain tensor math: one key-similarity matmul, a masked
    argmax, a one-hot matmul for the member sums, which Inductor fuses; no Triton kernel
    needed. Not timed on a GPU (none was available)."""
    L = hidden.shape[1]
    tgt = visual_mask & keep_mask & (scores == TARGET)
    src = visual_mask & ~keep_mask & tgt.any(1, keepdim=True)
    kv = torch.nn.functional.normalize(keys.float(), dim=-1)
    sim = (kv @ kv.transpose(1, 2)).masked_fill(~tgt[:, None, :], float("-inf"))   # [B, src, tgt]
    to = sim.argmax(-1)                                                            # first max
    assign = ((to[..., None] == torch.arange(L, device=hidden.device)) & src[..., None]).float()
    x = hidden.float()
    count = assign.sum(1)                                                          # [B, L] per target
    agg = (assign.transpose(1, 2) @ x) / count.clamp(min=1)[..., None]
    merged = (x + agg).to(hidden.dtype)
    return torch.where((tgt & (count > 0))[..., None], merged, hidden)


@torch.library.custom_op("vtp::visionzip_scores", mutates_args=())
def _visionzip_scores(dominant: torch.Tensor, visual_mask: torch.Tensor, n_keep: torch.Tensor,
                      ctx_num: int, ctx_den: int) -> torch.Tensor:
    return visionzip_scores(dominant, visual_mask, n_keep, ctx_num, ctx_den)


@_visionzip_scores.register_fake
def _(dominant, visual_mask, n_keep, ctx_num, ctx_den):
    return dominant.new_empty(visual_mask.shape, dtype=torch.float32)


@torch.library.custom_op("vtp::visionzip_merge", mutates_args=())
def _visionzip_merge(hidden: torch.Tensor, visual_mask: torch.Tensor, keep_mask: torch.Tensor,
                     scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return visionzip_merge(hidden, visual_mask, keep_mask, scores, keys)


@_visionzip_merge.register_fake
def _(hidden, visual_mask, keep_mask, scores, keys):
    return torch.empty_like(hidden)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
decomposed("visionzip_scores", visionzip_scores)
decomposed("visionzip_merge", visionzip_merge_decomposed)
