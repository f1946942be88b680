"""DART (Wen et al., EMNLP'25, arXiv 2502.11494): "Stop looking for important tokens" —
keep the visual tokens that duplicate the others least.

Before decoder layer K (``layer``, default 2): pivots are the tokens whose keys in layer K-1
have the largest L1 norm, ``pivots`` visual ones and ``pivots`` text ones from the text after
the image; every pivot in position order takes the ``(k - P_img) // (P_img + P_txt)`` visual
tokens least cosine-similar to it (hidden states entering layer K), and the rest of the budget
goes to the least duplicated remaining tokens. No attention map is needed.
"""
from __future__ import annotations

import torch

from ..sites import LayerSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import register


def scorer(pivots: int):
    def score(x):
        return torch.ops.vtp.dart_scores(x["k"], x["hidden"], x["visual_mask"], x["live"],
                                         x["n_keep"], pivots)
    score.__name__ = f"dart_score_p{pivots}"
    return score


@method_options
class DARTOptions(MethodOptions):
    layer: int = opt(2, "prune before this decoder layer")
    pivots: int = opt(4, "image pivots and text pivots (each); kept tokens are the least similar to them")

    def check(self):
        self.check_int("layer", lo=1)
        self.check_int("pivots", lo=1)


@register
class DART(Method):
    """DART: duplication-aware selection around key-norm pivots at layer K."""
    name = "dart"
    paper = "EMNLP 2025 (arXiv 2502.11494)"
    options = DARTOptions

    def sites(self, cfg, num_layers):
        p = cfg.params
        return [LayerSite(layer=p["layer"], keep=cfg.keep, score=scorer(p["pivots"]), name="dart")]
