"""FastV (Chen et al., arXiv 2403.06764): keep the visual tokens the last token attends to most.

At layer K (option ``layer``, default 2) keep the top-k visual tokens by the attention the last
token pays them in layer K-1, averaged over heads. The score row is computed from layer K-1's q
and k, so any attention implementation (SDPA, flash) works.
"""
from __future__ import annotations

import torch

from ..sites import LayerSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import register


def score(x):
    """Head-mean attention of each row's last token at layer K-1 (``x``: see :mod:`..sites`)."""
    return torch.ops.vtp.attn_row_scores(x["q"], x["k"], x["key_mask"], x["scale"], -1)


@method_options
class FastVOptions(MethodOptions):
    layer: int = opt(2, "prune before this decoder layer; scores with layer-1's attention")

    def check(self):
        self.check_int("layer", lo=1)


@register
class FastV(Method):
    """FastV: last-token attention at layer K-1; top-k visual tokens kept from layer K on."""
    name = "fastv"
    paper = "arXiv 2403.06764"
    options = FastVOptions
    per_frame_ok = True

    def sites(self, cfg, num_layers):
        return [LayerSite(layer=cfg.params["layer"], keep=cfg.keep, score=score, name="fastv")]
