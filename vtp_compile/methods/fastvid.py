"""FastVID (Shen et al., arXiv 2503.11187): split the clip where consecutive frames differ
(DySeg), keep each frame's salient tokens, and on a few anchor frames per segment the tokens at
density peaks, into which the rest of the segment is merged (STPrune).

At the encoder site, on the projected visual features (:mod:`vtp_compile.kernels.fastvid`). The
row's kept count is split into salient tokens (``1 - context`` of it, spread evenly over the
frames) and context tokens (``context`` of it, spread over the anchor frames). Defaults are the
authors' (LLaVA-OneVision): ``tau`` 0.9, ``cuts`` 7 (8 segments at most from the lowest
similarities, plus every similarity under ``tau``), ``context`` 0.4, ``anchor_every`` 4,
``beta`` 0.6, 4 nearest neighbours. Departures (docs/video.md): a frame's global feature is the
mean of its projected tokens and salience is how unlike its frame mean a token is (the authors
read both from a second SigLIP attention-pooling head, which most VLMs do not have); a removed
token merges into one context token of its segment (the authors' anchors each absorb the whole
segment); the budget is the row's, apportioned exactly.
"""
from __future__ import annotations

import torch

from ..sites import EncoderSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import register


@method_options
class FastVIDOptions(MethodOptions):
    tau: float = opt(0.9, "a new segment starts where consecutive frames' similarity is below this")
    cuts: int = opt(7, "the lowest consecutive-frame similarities that always start a segment")
    context: float = opt(0.4, "fraction of the kept tokens chosen by density on anchor frames")
    anchor_every: int = opt(4, "every this many frames of a segment (from its last) is an anchor")
    beta: float = opt(0.6, "weight a context token keeps of itself when the segment merges into it")

    def check(self):
        self.check_number("tau", -1.0, 1.0)
        self.check_int("cuts", lo=0)
        self.check_number("context", 0.0, 1.0)
        self.check_int("anchor_every", lo=1)
        self.check_number("beta", 0.0, 1.0)


def scorer(p, least: int):
    def score(x):
        cand = x["visual_mask"] & x["live"]
        return torch.ops.vtp.fastvid_scores(x["hidden"], x["frames"], cand, x["n_keep"], p["tau"],
                                            p["cuts"], p["context"], p["anchor_every"], least)
    score.__name__ = "fastvid_score"
    return score


def merger(p):
    def merge(x):
        cand = x["visual_mask"] & x["live"]
        return torch.ops.vtp.fastvid_merge(x["hidden"], x["frames"], cand, x["keep_mask"], x["scores"],
                                           p["tau"], p["cuts"], p["beta"])
    merge.__name__ = "fastvid_merge"
    return merge


@register
class FastVID(Method):
    """FastVID: temporal segments, salient and density-peak tokens, segment merging."""
    name = "fastvid"
    paper = "arXiv 2503.11187"
    options = FastVIDOptions
    reads_frames = True
    own_frame_allocation = "salient tokens evenly, context tokens over anchor frames"

    def sites(self, cfg, num_layers):
        rule = cfg.keep.frames
        p = dict(cfg.params)
        return [EncoderSite(keep=cfg.keep, score=scorer(p, rule.min_per_frame), merge=merger(p),
                            name="fastvid", inputs=("frames",))]
