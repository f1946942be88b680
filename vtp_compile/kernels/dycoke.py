"""DyCoke's temporal token merging (Tao et al., CVPR'25, arXiv 2411.15024), stage 1: inside
windows of four frames of a clip, a frame's tokens that repeat the same spatial token of an
earlier frame are dropped. See :mod:`vtp_compile.methods.dycoke`.

Per row (``frames`` from :func:`vtp_compile.kernels.frames.frame_ids`):

* a **clip** is a maximal run of consecutive frames with the same token count (frames of one
  clip have the same grid; an image of another size starts a new one);
* within a clip, windows of four frames ``w0 w1 w2 w3``: ``w0`` is the reference; ``w1`` and
  ``w2`` are compared with ``w0``, ``w3`` with ``w2`` (the authors' pairs and windows);
* a compared token's **novelty** is ``1 - cos`` with the token at the same place of its
  reference frame (the cosine rounded to 1/4096, so that tokens that repeat their reference
  exactly tie exactly, whatever the backend's rounding: position order decides).

``dycoke_scores`` ranks: reference frames first (spread evenly over them, each frame in position
order), then the compared frames' tokens spread evenly over those frames (each by novelty).
"""
from __future__ import annotations

import torch

from .frames import frame_priority, frame_sizes
from .registry import decomposed

WINDOW = 4
STEPS = 4096    # cosines are rounded to 1/STEPS: repeated tokens tie exactly on every backend


def frame_starts(frames: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` int64: frame ``f``'s first position in column ``f`` (L for no frame)."""
    B, L = frames.shape
    pos = torch.arange(L, device=frames.device).expand(B, L)
    idx = torch.where(cand, frames, torch.zeros_like(frames)).clamp(min=0)
    val = torch.where(cand, pos, torch.full_like(pos, L))
    return torch.full_like(pos, L).scatter_reduce(1, idx, val, reduce="amin")


def window_back(sizes: torch.Tensor) -> torch.Tensor:
    """``[B, F]`` int64 per frame column: how many frames back its reference is (0: none)."""
    B, F = sizes.shape
    col = torch.arange(F, device=sizes.device).expand(B, F)
    prev = torch.cat([torch.full_like(sizes[:, :1], -1.0), sizes[:, :-1]], dim=1)
    new_clip = sizes != prev
    clip_start = torch.cummax(torch.where(new_clip, col, torch.zeros_like(col)), dim=1).values
    w = (col - clip_start) % WINDOW
    back = torch.where(w == 2, w, (w > 0).long())          # w0: 0 (reference), w1: 1, w2: 2, w3: 1
    return torch.where(sizes > 0, back, torch.zeros_like(back))


def dycoke_scores(hidden: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor,
                  min_per_frame: int) -> torch.Tensor:
    """``[B, L]`` float32 ranking (higher first): see the module docstring (each tier gives every
    frame ``min_per_frame`` tokens first); -inf off the candidates."""
    B, L, D = hidden.shape
    pos = torch.arange(L, device=hidden.device).expand(B, L)
    f = frames.clamp(min=0)
    sizes = frame_sizes(frames, cand)
    starts = frame_starts(frames, cand)
    back = window_back(sizes).gather(1, f)                                 # per token
    ref_frame = (f - back).clamp(min=0)
    ref_pos = starts.gather(1, ref_frame) + (pos - starts.gather(1, f))
    ref_pos = torch.where(cand & (back > 0), ref_pos, pos).clamp(max=L - 1)
    x = torch.nn.functional.normalize(hidden.float(), dim=-1)
    ref = torch.gather(x, 1, ref_pos[..., None].expand(B, L, D))
    novelty = 1.0 - torch.round((x * ref).sum(-1) * STEPS) / STEPS
    is_ref = cand & (back == 0)
    compared = cand & (back > 0)
    first = frame_priority(-pos.float(), frames, is_ref, sizes, min_per_frame)
    rest = frame_priority(novelty, frames, compared, sizes, min_per_frame)
    out = torch.where(is_ref, first + L, rest)
    return torch.where(cand, out, torch.full_like(out, float("-inf")))


@torch.library.custom_op("vtp::dycoke_scores", mutates_args=())
def _dycoke_scores(hidden: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor,
                   min_per_frame: int) -> torch.Tensor:
    return dycoke_scores(hidden, frames, cand, min_per_frame)


@_dycoke_scores.register_fake
def _(hidden, frames, cand, min_per_frame):
    return hidden.new_empty(frames.shape, dtype=torch.float32)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
decomposed("dycoke_scores", dycoke_scores)
