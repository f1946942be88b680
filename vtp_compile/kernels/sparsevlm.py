"""SparseVLM's ops: the stage schedule (``sparsevlm_keep``) and the rater-attention score
(``sparsevlm_scores``)."""
from __future__ import annotations

from typing import Optional

import torch

from .ranks import ranks
from .registry import decomposed

# the paper's per-stage kept counts for 576 visual tokens (LLaVA-1.5), at two budgets
ANCHORS = ((64, (66, 30, 17)), (192, (300, 200, 110)))
_BASE_V = 576.0


def profile_fraction(t, stage: int):
    """Stage ``stage``'s (0-based) kept fraction of V for a target fraction ``t`` = budget / V
    (float or float64 tensor): the paper's counts at the two anchor budgets, linear in between,
    proportional below the lower and above the upper anchor; all of V from ``t >= 1``."""
    (b0, c0), (b1, c1) = ANCHORS
    t0, t1 = b0 / _BASE_V, b1 / _BASE_V
    p0, p1 = c0[stage] / _BASE_V, c1[stage] / _BASE_V
    w = (t - t0) / (t1 - t0)
    if isinstance(t, torch.Tensor):
        mid = p0 + w * (p1 - p0)
        out = torch.where(t <= t0, p0 * (t / t0), torch.where(t >= t1, p1 * (t / t1), mid))
        return torch.where(t >= 1.0, torch.ones_like(out), out)
    if t >= 1.0:
        return 1.0
    if t <= t0:
        return p0 * (t / t0)
    if t >= t1:
        return p1 * (t / t1)
    return p0 + w * (p1 - p0)


def sparsevlm_keep(n_orig: torch.Tensor, stage: int, budget: int, num: int, den: int) -> torch.Tensor:
    """Stage ``stage``'s (0-based) kept count per row: ``clamp(floor(V p + 1/2), 1, V)`` with
    ``p = profile_fraction(budget / V)`` (or ``num / den``), ``V = n_orig``.

    Decomposed (:mod:`.lowering`): a few elementwise ops on ``[B]`` int64/float64 with loops
    bounded by graph constants; Inductor fuses them into one small kernel (no Triton
    kernel needed, nothing per token). Not timed on a GPU (none was available)."""
    v = n_orig.to(torch.float64)
    if budget > 0:
        t = torch.full_like(v, float(budget)) / v.clamp(min=1.0)
    else:
        t = torch.full_like(v, num / den)
    n = torch.floor(v * profile_fraction(t, stage) + 0.5)
    return torch.minimum(n.clamp(min=1.0), v.clamp(min=1.0)).to(torch.int64)


def raters(embeds: torch.Tensor, visual_mask: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: each row's text raters. Candidates: the live text tokens after the
    row's last visual token (all live text if none follows). Relevance of text token t: the
    mean over the row's visual tokens v of ``softmax_t(e_v . e_t)`` over the candidates
    (``embeds``: the input embeddings); raters: candidates above the mean relevance (all
    candidates when none is)."""
    B, L = visual_mask.shape
    dev = embeds.device
    vis = visual_mask & live
    text = live & ~visual_mask
    pos = torch.arange(L, device=dev).expand(B, L)
    last_vis = torch.where(vis, pos, torch.full_like(pos, -1)).amax(1)
    after = text & (pos > last_vis[:, None])
    cand = torch.where(after.any(1, keepdim=True), after, text)
    e = embeds.float()
    m = (e @ e.transpose(1, 2)).masked_fill(~cand[:, None, :], float("-inf"))     # [B, v, t]
    p = torch.softmax(m, dim=-1).nan_to_num(0.0)
    rel = (p * vis[:, :, None]).sum(1) / vis.sum(1, keepdim=True).clamp(min=1)    # [B, t]
    mean = (rel * cand).sum(1, keepdim=True) / cand.sum(1, keepdim=True).clamp(min=1)
    out = cand & (rel > mean)
    return torch.where(out.any(1, keepdim=True), out, cand)


def sparsevlm_scores(q_all: torch.Tensor, k: torch.Tensor, mask_all: Optional[torch.Tensor],
                     scale: float, embeds: torch.Tensor, visual_mask: torch.Tensor,
                     live: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` float32: the attention the row's raters pay each token, averaged over heads
    and raters (softmax of ``scale q k^T`` over what each rater may attend to, ``mask_all``
    ``[B, L, S]`` bool or additive).

    Decomposed (:mod:`.lowering`): attention of the rater rows (a batched matmul, a masked
    softmax, means) and the rater mask (one embedding similarity, a softmax, comparisons); plain
    tensor math on static shapes that Inductor fuses. Not timed on a GPU (none was available)."""
    B, H, L, D = q_all.shape
    r = raters(embeds, visual_mask, live)
    kk = k.float()
    if kk.shape[1] != H:
        kk = kk.repeat_interleave(H // kk.shape[1], dim=1)
    logits = torch.einsum("bhld,bhsd->bhls", q_all.float(), kk) * scale
    if mask_all is not None:
        if mask_all.dtype == torch.bool:
            logits = logits.masked_fill(~mask_all[:, None], float("-inf"))
        else:
            logits = logits + mask_all[:, None].float()
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0).mean(1)                  # [B, L, S]
    w = r.float()
    score = (w[:, :, None] * probs).sum(1) / w.sum(1, keepdim=True).clamp(min=1.0)
    return score[:, :L]


@torch.library.custom_op("vtp::sparsevlm_scores", mutates_args=())
def _sparsevlm_scores(q_all: torch.Tensor, k: torch.Tensor, mask_all: Optional[torch.Tensor],
                      scale: float, embeds: torch.Tensor, visual_mask: torch.Tensor,
                      live: torch.Tensor) -> torch.Tensor:
    return sparsevlm_scores(q_all, k, mask_all, scale, embeds, visual_mask, live)


@_sparsevlm_scores.register_fake
def _(q_all, k, mask_all, scale, embeds, visual_mask, live):
    return q_all.new_empty(visual_mask.shape, dtype=torch.float32)


@torch.library.custom_op("vtp::sparsevlm_keep", mutates_args=())
def _sparsevlm_keep(n_orig: torch.Tensor, stage: int, budget: int, num: int, den: int) -> torch.Tensor:
    return sparsevlm_keep(n_orig, stage, budget, num, den)


@_sparsevlm_keep.register_fake
def _(n_orig, stage, budget, num, den):
    return torch.empty_like(n_orig, dtype=torch.int64)


# ---- v1 recycling ----------------------------------------------------------------------------
def recycle_count(n_pruned):
    """``(recycled, clusters)`` for ``n_pruned`` tokens: the top 30 % plus one, in a tenth of
    those plus one clusters (none when nothing is pruned). Ints or int64 tensors."""
    if isinstance(n_pruned, torch.Tensor):
        rec = torch.where(n_pruned > 0, (3 * n_pruned) // 10 + 1, torch.zeros_like(n_pruned))
        return rec, torch.where(n_pruned > 0, rec // 10 + 1, torch.zeros_like(n_pruned))
    if n_pruned <= 0:
        return 0, 0
    rec = (3 * n_pruned) // 10 + 1
    return rec, rec // 10 + 1


def recycle_rank(score: torch.Tensor, visual_mask: torch.Tensor, live: torch.Tensor,
                 k: torch.Tensor) -> torch.Tensor:
    """Scores that rank, per row, the top ``k`` visual tokens (``3 + s/2``), then the cluster
    representatives (``2 + s/2``: the best ``clusters`` of the pruned), then the other recycled
    tokens (``1 + s/2``), then the rest (``s/2``); -1 off the visual tokens. ``s``: the rater
    score; ranks ties to the lower position.

    Decomposed (:mod:`.lowering`): the ranks (a stable sort and its argsort), then elementwise;
    no Triton kernel needed. Not timed on a GPU (none was available)."""
    vis = visual_mask & live
    s = score.float()
    rank = ranks(torch.where(vis, -s, torch.full_like(s, float("inf"))))
    V = vis.sum(1)
    k = torch.minimum(k.to(s.device), V)
    rec, clusters = recycle_count(V - k)
    rp = rank - k[:, None]
    half = s.clamp(0.0, 1.0) * 0.5
    out = torch.where(rank < k[:, None], 3.0 + half,
                      torch.where(rp < clusters[:, None], 2.0 + half,
                                  torch.where(rp < rec[:, None], 1.0 + half, half)))
    return torch.where(vis, out, torch.full_like(out, -1.0))


def recycle_merge(hidden: torch.Tensor, visual_mask: torch.Tensor, keep_mask: torch.Tensor,
                  scores: torch.Tensor) -> torch.Tensor:
    """Each recycled token (``scores`` from :func:`recycle_rank`: in [1, 2) and not kept) joins
    its most cosine-similar kept representative (in [2, 3); ties: lower position); every
    representative becomes the mean of itself and its members.

    Decomposed (:mod:`.lowering`): one similarity matmul, a masked argmax, a one-hot matmul for
    the member sums (the one-hot by comparison: ``one_hot`` range-checks its input on the host);
    no Triton kernel needed. Not timed on a GPU (none was available)."""
    reps = keep_mask & visual_mask & (scores >= 2.0) & (scores < 3.0)
    rec = visual_mask & ~keep_mask & (scores >= 1.0) & (scores < 2.0)
    h = hidden.float()
    f = torch.nn.functional.normalize(h, dim=-1)
    sim = (f @ f.transpose(1, 2)).masked_fill(~reps[:, None, :], float("-inf"))   # [B, t, rep]
    to = sim.argmax(-1)                                                            # first max
    cols = torch.arange(hidden.shape[1], device=hidden.device)
    assign = (to[:, :, None] == cols).to(h.dtype) * rec[:, :, None]     # one-hot, no range check
    assign = assign + torch.diag_embed(reps.to(h.dtype))                            # [B, t, rep]
    total = assign.transpose(1, 2) @ h                                              # [B, rep, D]
    count = assign.sum(1)[:, :, None]
    merged = total / count.clamp(min=1.0)
    return torch.where(reps[:, :, None], merged.to(hidden.dtype), hidden)


@torch.library.custom_op("vtp::sparsevlm_recycle_rank", mutates_args=())
def _recycle_rank(score: torch.Tensor, visual_mask: torch.Tensor, live: torch.Tensor,
                  k: torch.Tensor) -> torch.Tensor:
    return recycle_rank(score, visual_mask, live, k)


@_recycle_rank.register_fake
def _(score, visual_mask, live, k):
    return torch.empty_like(score, dtype=torch.float32)


@torch.library.custom_op("vtp::sparsevlm_recycle_merge", mutates_args=())
def _recycle_merge(hidden: torch.Tensor, visual_mask: torch.Tensor, keep_mask: torch.Tensor,
                   scores: torch.Tensor) -> torch.Tensor:
    return recycle_merge(hidden, visual_mask, keep_mask, scores)


@_recycle_merge.register_fake
def _(hidden, visual_mask, keep_mask, scores):
    return torch.empty_like(hidden)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
decomposed("sparsevlm_keep", sparsevlm_keep)
decomposed("sparsevlm_scores", sparsevlm_scores)
decomposed("sparsevlm_recycle_rank", recycle_rank)
decomposed("sparsevlm_recycle_merge", recycle_merge)
