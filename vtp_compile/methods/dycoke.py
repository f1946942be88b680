"""DyCoke (Tao et al., CVPR'25, arXiv 2411.15024), stage 1: temporal token merging.

At the encoder site, frames of a clip go in windows of four; the first of a window is kept as
the reference, the others drop the tokens that repeat the token at the same place of an earlier
frame of the window (lowest ``1 - cos`` first; :mod:`vtp_compile.kernels.dycoke`). The row's
kept count goes to the reference frames first, then evenly to the other frames (at least
``min_per_frame`` each). Departures (docs/video.md): the budget is the row's instead of a fixed
per-frame ratio; the authors' loop leaves some frames of the last window whole or drops an odd
last frame, this does neither; stage 2 (re-selecting the image tokens in the KV cache at every
decode step) is not implemented.
"""
from __future__ import annotations

import torch

from ..sites import EncoderSite
from .base import Method
from .registry import register


def scorer(min_per_frame: int):
    def score(x):
        cand = x["visual_mask"] & x["live"]
        return torch.ops.vtp.dycoke_scores(x["hidden"], x["frames"], cand, min_per_frame)
    score.__name__ = f"dycoke_score_m{min_per_frame}"
    return score


@register
class DyCoke(Method):
    """DyCoke's temporal token merging: reference frames kept, repeats in the others dropped."""
    name = "dycoke"
    paper = "CVPR 2025 (arXiv 2411.15024)"
    reads_frames = True
    own_frame_allocation = "reference frames first, then the others evenly"

    def sites(self, cfg, num_layers):
        rule = cfg.keep.frames
        return [EncoderSite(keep=cfg.keep, score=scorer(rule.min_per_frame), name="dycoke",
                            inputs=("frames",))]
