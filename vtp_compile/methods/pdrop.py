"""PDrop / PyramidDrop (Xing et al., CVPR'25, arXiv 2410.17247): drop visual tokens in stages.

The decoder is cut into stages at ``layers`` (default: a quarter, a half and three quarters of
the depth, [8, 16, 24] for 32 layers). Before stage layer ``l_s`` the visual tokens still kept
are ranked by the attention the last prompt token pays them in layer ``l_s`` itself (its own
q and k on the tokens entering it, head mean, softmax over every key it may attend to, as the
official code recomputes them) and the top ``floor(V * lam ** s)`` stay (``V``: the row's
visual count before the first stage, ``s`` = 1, 2, ...).

``budget`` is the paper's: the visual count averaged over the decoder layers,
``(l_1 V + sum_s (l_{s+1} - l_s) V lam^s) / L``. Each row solves ``lam`` for its own ``V`` by
bisection inside the graph (60 float64 halvings); a ``ratio`` asks for the average ``ratio * V``.
A budget below what the first stage layer allows (``V l_1 / L``) gives ``lam = 0``: every stage
keeps one token; move ``layers`` earlier for such budgets.
"""
from __future__ import annotations

import logging

import torch

from ..config import KeepRule
from ..errors import OptionError
from ..sites import LayerSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import register

log = logging.getLogger("vtp_compile")
ops = torch.ops.vtp


def default_layers(num_layers: int) -> list[int]:
    """The paper's four equal parts: [L/4, L/2, 3L/4] (rounded half up), without duplicates."""
    out = []
    for q in (1, 2, 3):
        layer = (q * num_layers * 2 + 4) // 8
        if 0 <= layer < num_layers and layer not in out:
            out.append(layer)
    return out


def schedule(layers: tuple, L: int, stage: int, budget: int, num: int, den: int):
    """The keep count of stage ``stage`` (1-based): ``max(1, floor(V lam^stage))`` per row."""
    bounds = [*layers, L]

    def pdrop_count(n_now, n_orig):
        if isinstance(n_orig, torch.Tensor):
            return ops.pdrop_keep(n_orig, bounds, stage, budget, num, den)
        return int(ops.pdrop_keep(torch.tensor([int(n_orig)]), bounds, stage, budget, num, den))
    pdrop_count.__name__ = f"pdrop_count_stage{stage}"
    return pdrop_count


def score(x):
    """Head-mean attention of each row's last prompt token (layer l's own q and k)."""
    return torch.ops.vtp.attn_row_scores(x["q"], x["k"], x["key_mask"], x["scale"], -1)


@method_options
class PDropOptions(MethodOptions):
    layers: tuple | None = opt(None, "stage layers (strictly increasing); None: a quarter, half and three quarters of the depth")

    def check(self):
        self.check_layers("layers")


@register
class PDrop(Method):
    """PyramidDrop: last-token attention at each stage layer; kept counts shrink geometrically."""
    name = "pdrop"
    aliases = ("pyramiddrop",)
    paper = "CVPR 2025 (arXiv 2410.17247)"
    options = PDropOptions
    per_frame_ok = True

    def sites(self, cfg, num_layers):
        layers = tuple(cfg.params["layers"] or default_layers(num_layers))
        if layers[-1] >= num_layers:
            raise OptionError(f"vtp: pdrop layers {list(layers)} out of range; this model has "
                              f"{num_layers} decoder layers")
        keep = cfg.keep
        budget = keep.budget or 0
        num, den = (0, 1) if keep.budget else (keep.ratio.numerator, keep.ratio.denominator)
        out = []
        for s, layer in enumerate(layers, start=1):
            rule = KeepRule(schedule=schedule(layers, num_layers, s, budget, num, den),
                            label=f"{keep}, layer average, stage {s}/{len(layers)}",
                            frames=keep.frames)
            out.append(LayerSite(layer=layer, keep=rule, score=score, name=f"pdrop-{s}",
                                 method="pdrop", own_attention=True))
        return out


def stage_counts(V: int, layers, num_layers: int, budget: int | None = None, ratio=None) -> list[int]:
    """Per-stage kept counts for ``V`` visual tokens (for reports and explain)."""
    from fractions import Fraction
    num, den = (0, 1)
    if ratio is not None:
        r = Fraction(ratio).limit_denominator(10_000)
        num, den = r.numerator, r.denominator
    return [schedule(tuple(layers), num_layers, s, budget or 0, num, den)(V, V)
            for s in range(1, len(layers) + 1)]
