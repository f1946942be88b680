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
from .registry import register

log = logging.getLogger("vtp_compile")
ITERS = 60


def default_layers(num_layers: int) -> list[int]:
    """The paper's four equal parts: [L/4, L/2, 3L/4] (rounded half up), without duplicates."""
    out = []
    for q in (1, 2, 3):
        layer = (q * num_layers * 2 + 4) // 8
        if 0 <= layer < num_layers and layer not in out:
            out.append(layer)
    return out


def solve_lambda(target, layers: tuple, L: int):
    """``lam`` in [0, 1] with layer average ``(l_1 + sum_s (l_{s+1} - l_s) lam^s) / L = target``
    (``target`` = budget / V, float64 ``[B]``); 0 where infeasible, 1 where ``target >= 1``."""
    bounds = list(layers) + [L]
    lo = torch.zeros_like(target)
    hi = torch.ones_like(target)
    for _ in range(ITERS):
        mid = (lo + hi) * 0.5
        avg = torch.full_like(mid, float(bounds[0]))
        p = torch.ones_like(mid)
        for s in range(1, len(bounds)):
            p = p * mid
            avg = avg + float(bounds[s] - bounds[s - 1]) * p
        ok = avg / float(L) <= target
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return torch.where(target >= 1.0, torch.ones_like(lo), lo)


def schedule(layers: tuple, L: int, stage: int, budget: int, num: int, den: int):
    """The keep count of stage ``stage`` (1-based): ``max(1, floor(V lam^stage))``."""
    def pdrop_count(n_now, n_orig):
        scalar = not isinstance(n_orig, torch.Tensor)
        v = torch.as_tensor(n_orig, dtype=torch.float64)
        target = (torch.full_like(v, float(budget)) / v.clamp(min=1.0) if budget
                  else torch.full_like(v, num / den))
        lam = solve_lambda(target, layers, L)
        p = torch.ones_like(lam)
        for _ in range(stage):
            p = p * lam
        keep = torch.floor(v * p).clamp(min=1.0).to(torch.int64)
        return int(keep) if scalar else keep
    pdrop_count.__name__ = f"pdrop_count_stage{stage}"
    return pdrop_count


def score(x):
    """Head-mean attention of each row's last prompt token (layer l's own q and k)."""
    return torch.ops.vtp.attn_row_scores(x["q"], x["k"], x["key_mask"], x["scale"], -1)


@register
class PDrop(Method):
    """PyramidDrop: last-token attention at each stage layer; kept counts shrink geometrically."""
    name = "pdrop"
    aliases = ("pyramiddrop",)
    paper = "CVPR 2025 (arXiv 2410.17247)"
    defaults = {"layers": None}

    def validate(self, params):
        layers = params["layers"]
        if layers is None:
            return
        ok = (isinstance(layers, (list, tuple)) and len(layers) >= 1
              and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers)
              and list(layers) == sorted(set(layers)))
        if not ok:
            raise OptionError(f"vtp: pdrop option 'layers' must be a strictly increasing list of "
                              f"decoder layer indices >= 0, got {layers!r}")

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
                            label=f"{keep}, layer average, stage {s}/{len(layers)}")
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
