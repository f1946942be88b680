"""CDPruner (Zhang et al., NeurIPS'25, arXiv 2506.10967): conditional diversity by a DPP.

An :class:`~vtp_compile.sites.EncoderSite` on the projected visual features. The DPP kernel is
``L = diag(q) S diag(q)``: ``S`` the cosine similarity of the row's visual features, ``q`` their
relevance to the instruction, ``q = exp(alpha r)`` with ``alpha = theta / (2 (1 - theta))``
(``theta`` the relevance weight, default 0.5; ``theta = 1`` uses ``r`` itself, ``theta = 0``
is diversity alone) and ``r`` the mean cosine between the visual feature and the instruction
tokens' input embeddings, min-max normalised per row. Instruction tokens: the row's text after
its first visual token (all its text if none follows). Greedy MAP inference with the
incremental Cholesky update picks the kept tokens (``torch.ops.vtp.dpp_greedy``).
"""
from __future__ import annotations

import torch

from ..sites import EncoderSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import register


def scorer(theta: float):
    def score(x):
        return torch.ops.vtp.cdpruner_scores(x["hidden"], x["visual_mask"], x["live"], x["n_keep"], theta)
    score.__name__ = f"cdpruner_score_theta{theta}"
    return score


@method_options
class CDPrunerOptions(MethodOptions):
    theta: float = opt(0.5, "weight of instruction relevance against diversity in the DPP kernel, in [0, 1]")

    def check(self):
        self.check_number("theta", 0, 1)


@register
class CDPruner(Method):
    """CDPruner: greedy MAP of an instruction-conditioned DPP over the visual features."""
    name = "cdpruner"
    paper = "NeurIPS 2025 (arXiv 2506.10967)"
    options = CDPrunerOptions

    def sites(self, cfg, num_layers):
        return [EncoderSite(keep=cfg.keep, score=scorer(float(cfg.params["theta"])), name="cdpruner",
                            method="cdpruner")]
