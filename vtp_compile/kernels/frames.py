"""Frames: which visual tokens belong together (an image, or one frame of a clip), and a row's
budget spread over them.

``frame_ids`` numbers each row's frames from what the model reads, never from a model name:

* a contiguous run of visual positions is one unit: an image, or a frame where the family writes
  text between frames (Qwen3-VL and GLM-4V timestamps, InternVL and SmolVLM frame labels);
* inside a run, a change of the M-RoPE temporal position (Qwen2-VL, Qwen2.5-VL: a clip is one
  run whose temporal grid steps per frame) starts a new frame;
* ``frame_tokens`` > 0 cuts a run every that many tokens (LLaVA-OneVision and LLaVA-NeXT-Video,
  whose clips are one run with one-dimensional positions: see :func:`vtp_compile.frame_tokens`).

``frame_priority`` turns any full ranking of a row's visual tokens into one whose top ``k`` keep
each frame's best tokens in proportion to the frame's weight: the ``r``-th best token of frame
``f`` gets the key ``(r + 1/2) / w_f`` (Webster's divisors, so the counts are the proportional
apportionment of ``k`` with ties to the lower position), after a first band that gives every
frame its ``min_per_frame`` best tokens (band order: rank, then higher weight, then position).
A frame holds no more tokens than it has, so capacities need no extra step.
"""
from __future__ import annotations

from typing import Optional

import torch

from .ranks import inverse
from .registry import decomposed

_BAND = 1.0e12     # keys of the minimum band sit this far below every proportional key


def _shift_right(x: torch.Tensor, fill) -> torch.Tensor:
    return torch.cat([torch.full_like(x[:, :1], fill), x[:, :-1]], dim=1)


def frame_ids(visual: torch.Tensor, temporal: Optional[torch.Tensor], frame_tokens: int) -> torch.Tensor:
    """``[B, L]`` int64: each visual position's frame, numbered from 0 in position order per row;
    -1 elsewhere. ``temporal``: ``[B, L]`` M-RoPE temporal positions or None."""
    B, L = visual.shape
    vis = visual.bool()
    prev = _shift_right(vis, False)
    start = vis & ~prev
    if temporal is not None:
        t = temporal.long()
        start = start | (vis & prev & (t != _shift_right(t, 0)))
    if frame_tokens > 0:
        pos = torch.arange(L, device=vis.device).expand(B, L)
        seg_start = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), dim=1).values
        start = start | (vis & ((pos - seg_start) % frame_tokens == 0))
    fid = start.long().cumsum(1) - 1
    return torch.where(vis, fid, torch.full_like(fid, -1))


def frame_sizes(frames: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` float: candidates per frame index (column ``f`` holds frame ``f``'s count)."""
    B, L = frames.shape
    idx = torch.where(cand, frames, torch.zeros_like(frames)).clamp(min=0)
    return torch.zeros(B, L, device=frames.device).scatter_add(1, idx, cand.float())


def frame_means(x: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """``[B, L, D]`` float: the mean of each frame's candidate rows of ``x`` ``[B, L, D]`` (row
    ``f`` holds frame ``f``'s mean; zero for an empty frame index)."""
    B, L, D = x.shape
    idx = torch.where(cand, frames, torch.zeros_like(frames)).clamp(min=0)
    w = cand.float()[..., None]
    sums = torch.zeros(B, L, D, device=x.device).scatter_add(1, idx[..., None].expand(B, L, D), x.float() * w)
    n = frame_sizes(frames, cand)
    return sums / n.clamp(min=1)[..., None]


def frame_priority(scores: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor,
                   weight: torch.Tensor, min_per_frame: int) -> torch.Tensor:
    """``[B, L]`` float32 scores whose top ``k`` is the per-frame apportionment of ``k``
    described in the module docstring (equal keys: lower position first), as distinct integers
    (``L`` minus the place in that order), so any later float32 ranking keeps it exactly.

    ``scores`` ``[B, L]``: the method's ranking (higher first, ties to the lower position);
    ``frames`` ``[B, L]`` from :func:`frame_ids`; ``cand`` ``[B, L]`` bool: the candidates (live
    visual positions); ``weight`` ``[B, L]`` float: frame ``f``'s weight in column ``f`` (> 0).
    Non-candidates score -inf."""
    B, L = scores.shape
    dev = scores.device
    f = torch.where(cand, frames, torch.full_like(frames, L))
    s = torch.nan_to_num(scores.double(), nan=-1e300, neginf=-1e300, posinf=1e300)
    s = torch.where(cand, s, torch.full_like(s, float("-inf")))
    by_score = torch.sort(s, dim=1, descending=True, stable=True).indices
    by_frame = torch.sort(f.gather(1, by_score), dim=1, stable=True).indices
    order = by_score.gather(1, by_frame)                          # frame, then score, then position
    fs = f.gather(1, order)
    pos = torch.arange(L, device=dev).expand(B, L)
    new = torch.cat([torch.ones_like(fs[:, :1], dtype=torch.bool), fs[:, 1:] != fs[:, :-1]], dim=1)
    seg = torch.cummax(torch.where(new, pos, torch.zeros_like(pos)), dim=1).values
    rank = (pos - seg).gather(1, inverse(order)).double()
    w = weight.double().gather(1, f.clamp(max=L - 1)).clamp(min=1e-12)
    key = (rank + 0.5) / w
    band = rank - _BAND - w / (1.0 + w)                          # rank first, then higher weight
    key = torch.where(rank < min_per_frame, band, key)
    key = torch.where(cand, key, torch.full_like(key, float("inf")))
    place = inverse(torch.sort(key, dim=1, stable=True).indices)
    return torch.where(cand, (L - place).float(), torch.full_like(key, float("-inf"), dtype=torch.float32))


@torch.library.custom_op("vtp::frame_ids", mutates_args=())
def _frame_ids(visual: torch.Tensor, temporal: Optional[torch.Tensor], frame_tokens: int) -> torch.Tensor:
    return frame_ids(visual, temporal, frame_tokens)


@_frame_ids.register_fake
def _(visual, temporal, frame_tokens):
    return visual.new_empty(visual.shape, dtype=torch.long)


@torch.library.custom_op("vtp::frame_sizes", mutates_args=())
def _frame_sizes(frames: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    return frame_sizes(frames, cand)


@_frame_sizes.register_fake
def _(frames, cand):
    return frames.new_empty(frames.shape, dtype=torch.float32)


@torch.library.custom_op("vtp::frame_priority", mutates_args=())
def _frame_priority(scores: torch.Tensor, frames: torch.Tensor, cand: torch.Tensor,
                    weight: torch.Tensor, min_per_frame: int) -> torch.Tensor:
    return frame_priority(scores, frames, cand, weight, min_per_frame)


@_frame_priority.register_fake
def _(scores, frames, cand, weight, min_per_frame):
    return scores.new_empty(scores.shape, dtype=torch.float32)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
decomposed("frame_ids", frame_ids)
decomposed("frame_sizes", frame_sizes)
decomposed("frame_priority", frame_priority)


# ---- the per-frame allocation, one rule for every caller ---------------------------------------
def rerank(call, scores, frames, cand, hidden, rule):
    """A site's scores re-ranked so that its kept count is spread over the frames as ``rule`` (a
    :class:`~vtp_compile.config.FrameRule`) says: ``even`` by frame size, ``unique`` by VidCom2's
    frame weights, then :func:`frame_priority`. ``call(op, *args)`` applies a ``torch.ops.vtp``
    op: the graph pass inserts a node, the vLLM selection calls it."""
    ops = torch.ops.vtp
    if rule.alloc == "even":
        weight = call(ops.frame_sizes, frames, cand)
    else:
        weight = call(ops.vidcom2_frame_weights, hidden, frames, cand)
    return call(ops.frame_priority, scores, frames, cand, weight, rule.min_per_frame)
