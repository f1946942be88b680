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
from .ranks import ranks
from .registry import decomposed, triton_kernel

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
    rank = ranks(key)
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


_PAIRS = 1 << 24     # distance entries one step of the CPU reference holds (frames of equal size
                     # go together, as many as fit)


def _frame_density(x: torch.Tensor, D: int) -> torch.Tensor:
    """``[G, T]`` float64 density-peak scores of ``G`` frames of ``T`` pool tokens each (``x``
    ``[G, T, D]`` float64)."""
    T = x.shape[1]
    sq = (x * x).sum(-1)
    # a matrix product in float64: fast, and exact enough that near-equal densities of
    # near-duplicate tokens still order as the exact differences do
    d2 = (sq[:, :, None] + sq[:, None, :] - 2.0 * (x @ x.transpose(1, 2))).clamp(min=0)
    eye = torch.eye(T, dtype=torch.bool, device=x.device)
    d2 = torch.where(eye, torch.zeros_like(d2), 0.5 * (d2 + d2.transpose(1, 2)))   # exact 0, symmetric
    d = (d2 / D).sqrt()
    # rho = exp(-m) is compared through m and taken in float64 for the score
    m = (d2 / D).topk(min(KNN, T), dim=-1, largest=False).values.mean(-1)
    denser = m[:, None, :] < m[:, :, None]
    delta = torch.where(denser, d, torch.full_like(d, float("inf"))).amin(-1)
    delta = torch.where(torch.isinf(delta), d.amax(-1), delta)
    return torch.exp(-m) * delta


def fastvid_density(hidden: torch.Tensor, frames: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` float64: density-peak score ``rho * delta`` of each ``pool`` token among its
    frame's pool tokens (0 elsewhere). Frame by frame, frames with the same number of pool
    tokens batched together: memory ``O(frames x T^2)``, never ``[B, L, L]``."""
    B, L, D = hidden.shape
    out = torch.zeros(B, L, dtype=torch.float64, device=hidden.device)
    b, p = pool.nonzero(as_tuple=True)           # row-major: a frame's pool tokens are consecutive
    if b.numel() == 0:
        return out
    _, counts = torch.unique_consecutive(b * (L + 1) + frames[b, p], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    for T in sorted(set(counts.tolist())):
        first = starts[counts == T]
        step = max(1, _PAIRS // (T * T))
        for c in range(0, first.numel(), step):
            at = first[c:c + step, None] + torch.arange(T, device=hidden.device)   # [G, T]
            bi, pi = b[at], p[at]
            out[bi, pi] = _frame_density(hidden[bi, pi].double(), D)
    return out


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
    ctx_rank = frame_priority(torch.ops.vtp.fastvid_density(hidden, frames, pool), frames, pool, weight, 0)
    chosen = topk_mask(ctx_rank, pool, n_ctx)
    out = torch.where(salient, sal_rank + 2 * L, torch.where(chosen, ctx_rank + L, sal_rank - 1))
    return torch.where(cand, out, torch.full_like(out, float("-inf")))


def fastvid_targets(hidden: torch.Tensor, seg: torch.Tensor, source: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` int64: for each ``source`` token, the ``target`` token of its segment (``seg``
    ``[B, L]``, per token) with the highest cosine similarity (ties: the lower position); -1
    for none. Source rows in chunks: memory ``O(B x chunk x L)``, never ``[B, L, L]``."""
    B, L, D = hidden.shape
    xn = torch.nn.functional.normalize(hidden.float(), dim=-1)
    out = torch.full((B, L), -1, dtype=torch.long, device=hidden.device)
    step = max(1, _PAIRS // max(1, B * L))
    for s in range(0, L, step):
        e = min(L, s + step)
        sim = xn[:, s:e] @ xn.transpose(1, 2)                                # [B, chunk, L]
        ok = source[:, s:e, None] & target[:, None, :] & (seg[:, s:e, None] == seg[:, None, :])
        best = torch.where(ok, sim, torch.full_like(sim, float("-inf"))).argmax(-1)   # first maximum
        out[:, s:e] = torch.where(ok.any(-1), best, torch.full_like(best, -1))
    return out


def fastvid_merge(hidden: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor, keep: torch.Tensor,
                  scores: torch.Tensor, tau: float, cuts: int, beta: float) -> torch.Tensor:
    """The hidden state with every removed candidate folded into its segment's most similar
    context token (step 5); everything else unchanged."""
    B, L, D = hidden.shape
    x = hidden.float()
    target = keep & cand & (scores >= L) & (scores <= 2 * L)
    source = cand & ~keep
    seg = segments(hidden, frames, cand, tau, cuts).gather(1, frames.clamp(min=0))
    best = torch.ops.vtp.fastvid_targets(hidden, seg, source, target)
    goes = best >= 0
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


@torch.library.custom_op("vtp::fastvid_density", mutates_args=())
def _fastvid_density(hidden: torch.Tensor, frames: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    return fastvid_density(hidden, frames, pool)


@_fastvid_density.register_fake
def _(hidden, frames, pool):
    return hidden.new_empty(frames.shape, dtype=torch.float64)


@torch.library.custom_op("vtp::fastvid_targets", mutates_args=())
def _fastvid_targets(hidden: torch.Tensor, seg: torch.Tensor, source: torch.Tensor,
                     target: torch.Tensor) -> torch.Tensor:
    return fastvid_targets(hidden, seg, source, target)


@_fastvid_targets.register_fake
def _(hidden, seg, source, target):
    return seg.new_empty(seg.shape, dtype=torch.long)


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
triton_kernel("fastvid_density", "FastVID's density peaks: k nearest and nearest denser token within "
              "each frame, without a [B, L, L] distance matrix")


@torch.library.register_kernel("vtp::fastvid_density", "cuda")
def _fastvid_density_cuda(hidden, frames, pool):
    from .triton.fastvid import fastvid_density   # on the first CUDA call: importing vtp_compile never imports triton
    return fastvid_density(hidden, frames, pool)


triton_kernel("fastvid_targets", "FastVID's merge: each removed token's most similar context token of "
              "its segment, without a [B, L, L] similarity matrix")


@torch.library.register_kernel("vtp::fastvid_targets", "cuda")
def _fastvid_targets_cuda(hidden, seg, source, target):
    from .triton.fastvid import fastvid_targets   # on the first CUDA call: importing vtp_compile never imports triton
    return fastvid_targets(hidden, seg, source, target)
