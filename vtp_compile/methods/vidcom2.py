"""VidCom2 (Liu et al., "Video Compression Commander", arXiv 2505.14454): frames unlike the clip
keep more tokens, and inside a frame the tokens unlike their clip and their frame are kept.

At the encoder site, on the projected visual features (:mod:`vtp_compile.kernels.vidcom2`):
each frame's weight is its token count times ``1 + s_t - mean s``, ``s`` a softmax (temperature
0.01) of how unlike the row's centre the frame's tokens are; the row's kept count is apportioned
by those weights (``per_frame="unique"``, at least ``min_per_frame`` per frame), and each frame
keeps its most unique tokens. ``per_frame="even"`` or ``"off"`` keep the token scores with another
allocation (ablations). Departures from the authors' code (docs/video.md): the budget is the
row's (a frame's count is apportioned exactly instead of rounded per frame), and an image in the
same prompt is one more frame of the row.
"""
from __future__ import annotations

import torch

from ..sites import EncoderSite
from .base import Method
from .registry import register


def score(x):
    cand = x["visual_mask"] & x["live"]
    return torch.ops.vtp.vidcom2_scores(x["hidden"], x["frames"], cand)


@register
class VidCom2(Method):
    """VidCom2: frame-uniqueness budgets, token uniqueness within frames (encoder site)."""
    name = "vidcom2"
    paper = "arXiv 2505.14454"
    per_frame_ok = True
    reads_frames = True
    default_per_frame = "unique"

    def sites(self, cfg, num_layers):
        return [EncoderSite(keep=cfg.keep, score=score, name="vidcom2", inputs=("frames",))]
