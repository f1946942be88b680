"""DCP-Prune's ops (ACGR + TATCS): per-row top-k masks, distribution consistency, cluster
re-selection and anchor-context merging. Every op works on ``[B, N, ...]`` rows with a
``valid`` mask, so rows may hold different numbers of visual tokens."""
from __future__ import annotations

import logging

import torch

from .ranks import ranks
from .registry import decomposed, triton_kernel
from .ties import sim_grid

_log = logging.getLogger("vtp_compile")

# ---- references ---------------------------------------------------------------------------------
def topk_mask(scores: torch.Tensor, valid: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, N]``: the ``k[b]`` valid entries of row ``b`` with the highest score (ties:
    lower index first). ``k[b]`` larger than the row's valid count keeps all of them."""
    key = torch.where(valid, scores.float(), torch.full_like(scores, float("-inf"), dtype=torch.float32))
    rank = ranks(key, descending=True)
    return valid & (rank < k.to(rank.device)[:, None])


def _masked_moments(x: torch.Tensor, m: torch.Tensor):
    w = m.to(x.dtype)[..., None]
    n = w.sum(1).clamp(min=1.0)
    mu = (x * w).sum(1) / n
    var = (((x - mu[:, None]) ** 2) * w).sum(1) / n
    return mu, var.sqrt()


def dist_consistency(features: torch.Tensor, valid: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """κ per row: how far the kept tokens' feature distribution is from all valid tokens'.

    ``κ = ||μ_f - μ_k|| / ||μ_f|| + | ||σ_f|| - ||σ_k|| | / ||σ_f||`` with per-channel mean μ and
    (population) standard deviation σ over the valid (``f``) and kept (``k``) rows of
    ``features`` ``[B, N, D]``. Returns float32 ``[B]``; lower means more consistent.
    """
    x = features.double()      # float32 leaves ~1e-7 of spurious spread on identical rows
    mu_f, sd_f = _masked_moments(x, valid)
    mu_k, sd_k = _masked_moments(x, kept & valid)
    eps = 1e-6
    first = (mu_f - mu_k).norm(dim=-1) / (mu_f.norm(dim=-1) + eps)
    second = (sd_f.norm(dim=-1) - sd_k.norm(dim=-1)).abs() / (sd_f.norm(dim=-1) + eps)
    return (first + second).float()


def cluster_select_scores(features: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor,
                          k: torch.Tensor, iters: int) -> torch.Tensor:
    """TATCS: cluster each row's valid entries into ``k[b]`` groups and favour each group's
    best-scored entry.

    Spherical k-means on ``features`` ``[B, N, D]`` (cosine, compared on the :func:`sim_grid`;
    ties: lower cluster), initialised with the ``k[b]`` best entries by ``scores`` (in score
    order), ``iters`` assignment/update rounds (an empty cluster keeps its centroid); then in each non-empty cluster the member with the highest score is
    picked. Returns float32 ``[B, N]``: ``2 + score`` for picks (scores are probabilities in
    [0, 1]), ``score`` for other valid entries, ``-inf`` for invalid ones, so the top ``k[b]``
    are the picks, topped up by score when clusters came out empty.
    """
    B, N, _ = features.shape
    dev = features.device
    s = scores.float()
    k = torch.clamp(torch.minimum(k.to(dev), valid.sum(1)), min=1)
    kmax = max(1, min(int(k.max()) if B else 1, N))
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    key = torch.where(valid, s, torch.full_like(s, float("-inf")))
    init = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :kmax]   # [B, kmax]
    cent = torch.gather(f, 1, init[..., None].expand(B, kmax, f.shape[-1]))          # [B, kmax, D]
    live_c = torch.arange(kmax, device=dev)[None, :] < k[:, None]                    # [B, kmax]
    vmask = valid[..., None].float()
    for it in range(iters + 1):
        sim = sim_grid(torch.einsum("bnd,bkd->bnk", f, cent)).masked_fill(~live_c[:, None, :], float("-inf"))
        assign = sim.argmax(-1)                                                       # [B, N]
        onehot = torch.nn.functional.one_hot(assign, kmax).float() * vmask             # [B, N, kmax]
        if it == iters:
            break
        sums = torch.einsum("bnk,bnd->bkd", onehot, f)
        count = onehot.sum(1)[..., None]
        cent = torch.where(count > 0, torch.nn.functional.normalize(sums, dim=-1), cent)
    member = onehot.bool()                                                              # [B, N, kmax]
    best = torch.where(member, key[..., None], torch.full_like(onehot, float("-inf"))).argmax(1)
    nonempty = member.any(1) & live_c                                                   # [B, kmax]
    # several empty clusters may point at the same entry: count picks, do not overwrite
    picked = (torch.zeros(B, N, device=dev).scatter_add(1, best, nonempty.float()) > 0)
    return torch.where(picked, key + 2.0, key)


def anchor_merge(hidden: torch.Tensor, visual_mask: torch.Tensor, keep_mask: torch.Tensor,
                 m: int) -> torch.Tensor:
    """ACGR: every removed visual row sends its features to its ``m`` most similar kept rows.

    For a context row ``c`` (visual, not kept), its top-``m`` anchors ``a`` (visual and kept) by
    cosine similarity (ranked on the :func:`sim_grid`; ties: lower position first) get weights ``w_ca = softmax_a(cos(x_c, x_a))``;
    each anchor becomes ``(x_a + Σ_c w_ca x_c) / (1 + Σ_c w_ca)``. Other rows are returned
    unchanged. ``hidden`` ``[B, L, D]``, masks bool ``[B, L]``.
    """
    B, L, D = hidden.shape
    x = hidden.float()
    f = torch.nn.functional.normalize(x, dim=-1)
    anchors = visual_mask & keep_mask
    contexts = visual_mask & ~keep_mask
    sim = f @ f.transpose(1, 2)                                        # [B, L(c), L(a)]
    sim = sim.masked_fill(~anchors[:, None, :], float("-inf"))
    m = max(1, min(int(m), L))
    idx = torch.sort(sim_grid(sim), dim=-1, descending=True, stable=True).indices[..., :m]
    vals = torch.gather(sim, -1, idx)                                   # [B, L, m], ties: lower index
    w = torch.softmax(vals, dim=-1).nan_to_num(0.0)                     # rows with no anchor: 0
    w = w * contexts[..., None].float()
    W = torch.zeros(B, L, L, device=hidden.device).scatter_add(2, idx, w)   # [B, c, a]
    num = x + W.transpose(1, 2) @ x
    den = 1.0 + W.sum(1)[..., None]
    return torch.where(anchors[..., None], num / den, x).to(hidden.dtype)


# ---- registration -------------------------------------------------------------------------------
@torch.library.custom_op("vtp::topk_mask", mutates_args=())
def _topk_mask(scores: torch.Tensor, valid: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return topk_mask(scores, valid, k)


@_topk_mask.register_fake
def _(scores, valid, k):
    return torch.empty_like(valid, dtype=torch.bool)


@torch.library.custom_op("vtp::dist_consistency", mutates_args=())
def _dist_consistency(features: torch.Tensor, valid: torch.Tensor, kept: torch.Tensor,
                      tag: str) -> torch.Tensor:
    kappa = dist_consistency(features, valid, kept)
    if _log.isEnabledFor(logging.DEBUG):   # per call, at run time (a sync; debug only)
        _log.debug("vtp %s: kappa per sample %s", tag, [round(v, 4) for v in kappa.tolist()])
    return kappa


@_dist_consistency.register_fake
def _(features, valid, kept, tag):
    return features.new_empty((features.shape[0],), dtype=torch.float32)


@torch.library.custom_op("vtp::cluster_select_scores", mutates_args=())
def _cluster_select_scores(features: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor,
                           k: torch.Tensor, iters: int) -> torch.Tensor:
    return cluster_select_scores(features, scores, valid, k, iters)


@_cluster_select_scores.register_fake
def _(features, scores, valid, k, iters):
    return features.new_empty(features.shape[:2], dtype=torch.float32)


@torch.library.custom_op("vtp::anchor_merge", mutates_args=())
def _anchor_merge(hidden: torch.Tensor, visual_mask: torch.Tensor, keep_mask: torch.Tensor,
                  m: int) -> torch.Tensor:
    return anchor_merge(hidden, visual_mask, keep_mask, m)


@_anchor_merge.register_fake
def _(hidden, visual_mask, keep_mask, m):
    return torch.empty_like(hidden)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
def _dist_consistency_decomposed(features, valid, kept, tag):
    # traced without the debug log of κ (that runs where the op runs as an op: eager, aot_eager)
    return dist_consistency(features, valid, kept)


decomposed("topk_mask", topk_mask)
decomposed("dist_consistency", _dist_consistency_decomposed)
decomposed("anchor_merge", anchor_merge)
triton_kernel("cluster_select_scores", "k-means rounds (TATCS): fused similarity + masked argmax")

@torch.library.register_kernel("vtp::cluster_select_scores", "cuda")
def _cluster_select_scores_cuda(features, scores, valid, k, iters):
    from .triton.dcp import cluster_select_scores   # on the first CUDA call: importing vtp_compile never imports triton
    return cluster_select_scores(features, scores, valid, k, iters)
