"""DivPrune (Alvar et al., CVPR'25): keep a maximally diverse subset of the visual features.

Greedy max-min diversity on the projected visual features with distance 1 - cosine; the first
pick is the token with the largest nearest-neighbour distance. Runs at the encoder site.
"""
from __future__ import annotations

from ..sites import EncoderSite
from .base import Method
from .registry import register
import torch


def score(x):
    return torch.ops.vtp.divprune_scores(x["hidden"], x["visual_mask"], x["n_keep"])


@register
class DivPrune(Method):
    """Greedy max-min cosine diversity on the projected visual features."""
    name = "divprune"
    paper = "CVPR 2025 (arXiv 2503.02175)"
    defaults = {}

    def sites(self, cfg, num_layers):
        return [EncoderSite(keep=cfg.keep, score=score, name="divprune")]
