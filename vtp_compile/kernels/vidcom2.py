"""VidCom2's scores (Liu et al., arXiv 2505.14454): how unlike the clip each frame is, and how
unlike their clip and their frame the tokens are. See :mod:`vtp_compile.methods.vidcom2`.

Per row, over its candidate tokens (live visual positions; ``frames`` from
:func:`vtp_compile.kernels.frames.frame_ids`):

1. keep the ``D // 2`` feature channels of lowest variance over the row's candidates, and
   L2-normalise every token on them;
2. the row's centre ``g`` and each frame's centre ``f_t`` are plain means of those tokens;
3. similarity is a multi-scale Gaussian kernel ``K(x, c) = sum_a exp(-|x - c|^2 / (2 a))`` over
   ``a`` in ``ALPHAS``;
4. token score ``-(K(x, g) + K(x, f_t))`` (higher: more unique);
5. frame weight ``n_t (1 + s_t - mean s)`` (the factor rounded to 1/256) with ``s = softmax(u / TAU)`` over the row's frames and
   ``u_t = -mean_i K(x_ti, g)``: a frame's share of the budget (kernels/frames.py apportions it).
"""
from __future__ import annotations

import torch

from .frames import frame_means, frame_sizes
from .registry import decomposed

ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)
TAU = 0.01
STEPS = 256     # a frame's factor 1 + s_t - mean s is rounded to 1/STEPS: float rounding never
                # decides a share (the softmax at temperature 0.01 saturates to exact ties)


def _kernel(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    d2 = (x - c).pow(2).sum(-1)
    return sum(torch.exp(-d2 / (2.0 * a)) for a in ALPHAS)


def _normalised(hidden: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    x = hidden.float()
    m = cand.float()[..., None]
    n = m.sum(1, keepdim=True).clamp(min=1)
    mean = (x * m).sum(1, keepdim=True) / n
    var = ((x - mean).pow(2) * m).sum(1) / n[:, 0]                       # [B, D]
    keep = torch.sort(var, dim=1, stable=True).indices[:, : x.shape[-1] // 2]
    sel = torch.gather(x, 2, keep[:, None, :].expand(x.shape[0], x.shape[1], keep.shape[1]))
    return torch.nn.functional.normalize(sel, dim=-1)


def _centres(xn: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor):
    m = cand.float()[..., None]
    g = (xn * m).sum(1) / m.sum(1).clamp(min=1)                          # [B, d]
    fm = frame_means(xn, frames, cand)                                   # [B, L, d] per frame index
    return g, fm


def vidcom2_scores(hidden: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` float32: token uniqueness (step 4); -inf off the candidates."""
    xn = _normalised(hidden, cand)
    g, fm = _centres(xn, frames, cand)
    own = torch.gather(fm, 1, frames.clamp(min=0)[..., None].expand_as(xn))
    s = _kernel(xn, g[:, None, :]) + _kernel(xn, own)
    return torch.where(cand, -s, torch.full_like(s, float("-inf")))


def vidcom2_frame_weights(hidden: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` float32: frame ``t``'s budget weight in column ``t`` (step 5); 0 for no frame."""
    xn = _normalised(hidden, cand)
    g, _ = _centres(xn, frames, cand)
    k = torch.where(cand, _kernel(xn, g[:, None, :]), torch.zeros_like(xn[..., 0]))
    n = frame_sizes(frames, cand)
    idx = torch.where(cand, frames, torch.zeros_like(frames)).clamp(min=0)
    u = -torch.zeros_like(n).scatter_add(1, idx, k) / n.clamp(min=1)
    has = n > 0
    logits = torch.where(has, u, torch.full_like(u, float("-inf")))
    logits = (logits - logits.amax(1, keepdim=True)) / TAU
    s = torch.softmax(logits, dim=1)
    mean = s.sum(1, keepdim=True) / has.sum(1, keepdim=True).clamp(min=1)
    factor = torch.round((1.0 + s - mean) * STEPS) / STEPS
    return torch.where(has, n * factor, torch.zeros_like(n))


@torch.library.custom_op("vtp::vidcom2_scores", mutates_args=())
def _vidcom2_scores(hidden: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    return vidcom2_scores(hidden, frames, cand)


@_vidcom2_scores.register_fake
def _(hidden, frames, cand):
    return hidden.new_empty(frames.shape, dtype=torch.float32)


@torch.library.custom_op("vtp::vidcom2_frame_weights", mutates_args=())
def _vidcom2_frame_weights(hidden: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    return vidcom2_frame_weights(hidden, frames, cand)


@_vidcom2_frame_weights.register_fake
def _(hidden, frames, cand):
    return hidden.new_empty(frames.shape, dtype=torch.float32)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
decomposed("vidcom2_scores", vidcom2_scores)
decomposed("vidcom2_frame_weights", vidcom2_frame_weights)
