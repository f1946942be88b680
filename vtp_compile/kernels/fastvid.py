"""FastVID (Shen et al., arXiv 2503.11187): dynamic temporal segmentation, then density-based
spatio-temporal pruning with merging. See :mod:`vtp_compile.methods.fastvid` for the rule and
where it departs from the authors' code.

Per row, over its candidates (live visual positions; ``frames`` from
:func:`vtp_compile.kernels.frames.frame_ids`, an image counts as a frame):

1. **segments**: a frame's global feature is the mean of its tokens; a new segment starts after
   frame ``t`` when ``cos(g_t, g_{t+1}) < tau`` or that similarity is among the ``cuts`` lowest;
2. **salient tokens**: ``n_keep - floor(n_keep * context)`` tokens spread evenly over the frames
   (kernels/frames.py), each frame's least like its frame mean (``1 - cos``);
3. **anchor frames**: in a segment of ``n`` frames, the last and every ``anchor_every``-th
   before it; the context budget is spread over them in proportion to their segment's tokens
   per anchor;
4. **context tokens**: on each anchor frame, its non-salient tokens by density-peak score
   ``rho * delta`` (``rho = exp(-mean d^2 to the KNN nearest, itself included)``, ``delta`` the
   distance to the nearest denser token of the frame, the frame's largest distance for its
   densest; ``d = |x_i - x_j| / sqrt(D)``);
5. **merging** (``fastvid_merge``): every removed token goes to the most cosine-similar context
   token of its segment; a context token that took ``m`` becomes ``w x + (1 - w) mean(itself and
   what it took)``, ``w = max(1 / (m + 2), beta)``.

``fastvid_scores`` encodes the tiers in its ranking: salient tokens score above ``2 L``, chosen
context tokens in ``[L, 2 L]``, the rest below ``L`` (they fill the budget in the salient order
when the anchors hold too few tokens). The merge reads the tiers back from the scores.
"""
from __future__ import annotations

import torch

from .dcp import topk_mask
from .frames import frame_means, frame_priority, frame_sizes
from .registry import decomposed

KNN = 4


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (torch.nn.functional.normalize(a, dim=-1) * torch.nn.functional.normalize(b, dim=-1)).sum(-1)


def segments(hidden: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor, tau: float,
             cuts: int) -> torch.Tensor:
    """``[B, L]`` int64: frame ``t``'s segment in column ``t`` (step 1)."""
    B, L, _ = hidden.shape
    n = frame_sizes(frames, cand)
    has = n > 0
    g = frame_means(hidden.float(), frames, cand)
    sim = _cos(g[:, :-1], g[:, 1:])                                       # [B, L-1] t vs t+1
    pair = has[:, :-1] & has[:, 1:]
    key = torch.where(pair, sim, torch.full_like(sim, float("inf")))
    rank = torch.empty_like(key, dtype=torch.long).scatter(
        1, torch.sort(key, dim=1, stable=True).indices,
        torch.arange(L - 1, device=hidden.device).expand(B, L - 1))
    cut = pair & ((sim < tau) | (rank < cuts))
    seg = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=hidden.device), cut.long().cumsum(1)], dim=1)
    return seg


def _segment_layout(seg: torch.Tensor, has: torch.Tensor, anchor_every: int):
    """Per frame column: frames in its segment, its place in the segment, whether it is an anchor."""
    B, L = seg.shape
    idx = torch.where(has, seg, torch.zeros_like(seg))
    count = torch.zeros(B, L, device=seg.device).scatter_add(1, idx, has.float())   # per segment id
    length = count.gather(1, idx)
    col = torch.arange(L, device=seg.device).expand(B, L)
    first = torch.full_like(col, L).scatter_reduce(1, idx, torch.where(has, col, torch.full_like(col, L)),
                                                   reduce="amin").gather(1, idx)
    place = col - first
    anchor = has & ((length.long() - 1 - place) % anchor_every == 0)
    return length, anchor


def _density(hidden: torch.Tensor, frames: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` float64: density-peak score ``rho * delta`` among ``pool``'s tokens of each frame."""
    B, L, D = hidden.shape
    x = hidden.float()
    # [B, L, L] in float64 through a matrix product: fast, and exact enough that near-equal
    # densities of near-duplicate tokens still order as the exact differences do
    xd = x.double()
    sq = (xd * xd).sum(-1)
    d2 = (sq[:, :, None] + sq[:, None, :] - 2.0 * (xd @ xd.transpose(1, 2))).clamp(min=0)
    eye = torch.eye(L, dtype=torch.bool, device=x.device)
    d2 = torch.where(eye, torch.zeros_like(d2), 0.5 * (d2 + d2.transpose(1, 2)))   # exact 0, symmetric
    d = (d2 / D).sqrt()
    same = pool[:, :, None] & pool[:, None, :] & (frames[:, :, None] == frames[:, None, :])
    inf = torch.full_like(d, float("inf"))
    near = torch.where(same, d2 / D, inf).topk(min(KNN, L), dim=-1, largest=False).values
    finite = torch.isfinite(near)
    # rho = exp(-m) is compared through m (exact in float32 where exp(-m) rounds to 1) and taken
    # in float64 for the score
    m = torch.where(finite, near, torch.zeros_like(near)).sum(-1) / finite.sum(-1).clamp(min=1)
    denser = same & (m[:, None, :] < m[:, :, None])
    delta = torch.where(denser, d, inf).amin(-1)
    widest = torch.where(same, d, torch.zeros_like(d)).amax(-1)
    delta = torch.where(torch.isinf(delta), widest, delta)
    score = torch.exp(-m.double()) * delta.double()
    return torch.where(pool, score, torch.zeros_like(score))


def fastvid_scores(hidden: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor, n_keep: torch.Tensor,
                   tau: float, cuts: int, context: float, anchor_every: int, min_per_frame: int) -> torch.Tensor:
    """``[B, L]`` float32 tiered ranking (see the module docstring); -inf off the candidates."""
    B, L, _ = hidden.shape
    f = frames.clamp(min=0)
    n = frame_sizes(frames, cand)
    x = hidden.float()
    own = torch.gather(frame_means(x, frames, cand), 1, f[..., None].expand_as(x))
    # 1 - cos as half the squared distance of the unit vectors: no cancellation near cos = 1
    unit = torch.nn.functional.normalize
    distinct = 0.5 * (unit(x, dim=-1) - unit(own, dim=-1)).pow(2).sum(-1)
    sal_rank = frame_priority(distinct, frames, cand, n, min_per_frame)
    k = torch.minimum(n_keep.to(cand.device), cand.sum(1))
    n_ctx = torch.floor(k.double() * context).long()
    salient = topk_mask(sal_rank, cand, k - n_ctx)
    seg = segments(hidden, frames, cand, tau, cuts)
    length, anchor = _segment_layout(seg, n > 0, anchor_every)
    per_seg_tokens = torch.zeros_like(n).scatter_add(1, torch.where(n > 0, seg, torch.zeros_like(seg)), n)
    anchors = torch.zeros_like(n).scatter_add(1, torch.where(n > 0, seg, torch.zeros_like(seg)), anchor.float())
    weight = torch.where(anchor, per_seg_tokens.gather(1, seg) / anchors.gather(1, seg).clamp(min=1),
                         torch.zeros_like(n))
    pool = cand & ~salient & anchor.gather(1, f)
    ctx_rank = frame_priority(_density(hidden, frames, pool), frames, pool, weight, 0)
    chosen = topk_mask(ctx_rank, pool, n_ctx)
    out = torch.where(salient, sal_rank + 2 * L, torch.where(chosen, ctx_rank + L, sal_rank - 1))
    return torch.where(cand, out, torch.full_like(out, float("-inf")))


def fastvid_merge(hidden: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor, keep: torch.Tensor,
                  scores: torch.Tensor, tau: float, cuts: int, beta: float) -> torch.Tensor:
    """The hidden state with every removed candidate folded into its segment's most similar
    context token (step 5); everything else unchanged."""
    B, L, D = hidden.shape
    x = hidden.float()
    target = keep & cand & (scores >= L) & (scores <= 2 * L)
    source = cand & ~keep
    seg = segments(hidden, frames, cand, tau, cuts).gather(1, frames.clamp(min=0))
    xn = torch.nn.functional.normalize(x, dim=-1)
    sim = xn @ xn.transpose(1, 2)                                          # [B, L, L] source x target
    ok = source[:, :, None] & target[:, None, :] & (seg[:, :, None] == seg[:, None, :])
    sim = torch.where(ok, sim, torch.full_like(sim, float("-inf")))
    best = sim.argmax(-1)                                                  # first maximum
    goes = ok.any(-1)
    idx = torch.where(goes, best, torch.zeros_like(best))
    w = goes.float()[..., None]
    sums = torch.zeros_like(x).scatter_add(1, idx[..., None].expand(B, L, D), x * w)
    cnt = torch.zeros(B, L, device=x.device).scatter_add(1, idx, goes.float())
    mean = (sums + x) / (cnt + 1.0)[..., None]
    w = torch.clamp(1.0 / (cnt + 2.0), min=beta)[..., None]
    merged = w * x + (1.0 - w) * mean
    return torch.where(target[..., None], merged, x).to(hidden.dtype)


@torch.library.custom_op("vtp::fastvid_scores", mutates_args=())
def _fastvid_scores(hidden: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor, n_keep: torch.Tensor,
                    tau: float, cuts: int, context: float, anchor_every: int, min_per_frame: int) -> torch.Tensor:
    return fastvid_scores(hidden, frames, cand, n_keep, tau, cuts, context, anchor_every, min_per_frame)


@_fastvid_scores.register_fake
def _(hidden, frames, cand, n_keep, tau, cuts, context, anchor_every, min_per_frame):
    return hidden.new_empty(frames.shape, dtype=torch.float32)


@torch.library.custom_op("vtp::fastvid_merge", mutates_args=())
def _fastvid_merge(hidden: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor, keep: torch.Tensor,
                   scores: torch.Tensor, tau: float, cuts: int, beta: float) -> torch.Tensor:
    return fastvid_merge(hidden, frames, cand, keep, scores, tau, cuts, beta)


@_fastvid_merge.register_fake
def _(hidden, frames, cand, keep, scores, tau, cuts, beta):
    return torch.empty_like(hidden)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
decomposed("fastvid_scores", fastvid_scores)
decomposed("fastvid_merge", fastvid_merge)
