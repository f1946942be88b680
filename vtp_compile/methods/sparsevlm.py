"""SparseVLM (Zhang et al., ICML'25, arXiv 2410.04417): text-guided visual token sparsification.

Per sample, the *raters* are the text tokens after the image whose mean relevance to the visual
tokens is above the mean (relevance: ``softmax`` over the text of the input-embedding dot
products, averaged over the visual tokens). At each stage layer ``l`` (``layers``, default the
paper's [2, 6, 15] scaled to the model's depth) the visual tokens are scored by the attention
the raters pay them in layer ``l`` (softmax of ``q k^T`` from that layer's own q and k, head
mean, rater mean; never eager attention), and the stage's kept count stays from layer ``l + 1``
on (the official code prunes the stage layer's output).

Stage counts (``schedule``): the paper's counts for 576 tokens at budget 64 ([66, 30, 17]) and
192 ([300, 200, 110]), as fractions of the row's visual count, linear in the budget in between
and proportional outside; ``budget >= V`` keeps everything. A model with fewer stage layers
than three uses the first counts.
"""
from __future__ import annotations

import torch

from .. import kernels  # noqa: F401  (registers torch.ops.vtp.*)
from ..config import KeepRule
from ..errors import OptionError
from ..sites import LayerSite
from .base import Method
from .registry import register

ops = torch.ops.vtp
PAPER_LAYERS = (2, 6, 15)     # for 32 decoder layers


def default_layers(num_layers: int) -> list[int]:
    """The paper's scoring layers scaled to the depth (rounded half up), at most ``L - 2`` (a
    stage prunes from the next layer on), without duplicates."""
    out = []
    for x in PAPER_LAYERS:
        layer = min((2 * x * num_layers + 32) // 64, num_layers - 2)
        if layer >= 0 and layer not in out:
            out.append(layer)
    return out


def schedule(stage: int, budget: int, num: int, den: int):
    """Stage ``stage``'s (0-based) kept count per row (see :mod:`..kernels.sparsevlm`)."""
    def sparsevlm_count(n_now, n_orig):
        if isinstance(n_orig, torch.Tensor):
            return ops.sparsevlm_keep(n_orig, stage, budget, num, den)
        return int(ops.sparsevlm_keep(torch.tensor([int(n_orig)]), stage, budget, num, den))
    sparsevlm_count.__name__ = f"sparsevlm_count_stage{stage + 1}"
    return sparsevlm_count


def score(x):
    """The raters' head-mean attention at the stage layer (``x``: see :mod:`..sites`)."""
    return ops.sparsevlm_scores(x["q_all"], x["k"], x["mask_all"], x["scale"], x["embeds"],
                                x["visual_mask"], x["live"])


def stage_counts(V: int, n_stages: int, budget: int | None = None, ratio=None) -> list[int]:
    """Per-stage kept counts for ``V`` visual tokens (reports, explain, tests)."""
    from fractions import Fraction
    num, den = 0, 1
    if budget is None:
        r = Fraction(ratio if ratio is not None else Fraction(1, 9)).limit_denominator(10_000)
        num, den = r.numerator, r.denominator
    return [schedule(s, budget or 0, num, den)(V, V) for s in range(n_stages)]


@register
class SparseVLM(Method):
    """SparseVLM: rater-attention scores at three stage layers; paper-shaped stage counts."""
    name = "sparsevlm"
    paper = "ICML 2025 (arXiv 2410.04417)"
    defaults = {"layers": None}

    def validate(self, params):
        layers = params["layers"]
        if layers is None:
            return
        ok = (isinstance(layers, (list, tuple)) and 1 <= len(layers) <= 3
              and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers)
              and list(layers) == sorted(set(layers)))
        if not ok:
            raise OptionError(f"vtp: sparsevlm option 'layers' must be a strictly increasing list "
                              f"of 1-3 decoder layer indices >= 0 (the scoring layers), got {layers!r}")

    def sites(self, cfg, num_layers):
        layers = list(cfg.params["layers"] or default_layers(num_layers))
        if not layers or layers[-1] + 1 >= num_layers:
            raise OptionError(f"vtp: sparsevlm layers {layers} out of range; this model has "
                              f"{num_layers} decoder layers and a stage prunes from the layer after "
                              f"its scoring layer, so the layers must be at most {num_layers - 2}")
        keep = cfg.keep
        budget = keep.budget or 0
        num, den = (0, 1) if keep.budget else (keep.ratio.numerator, keep.ratio.denominator)
        out = []
        for s, layer in enumerate(layers):
            rule = KeepRule(schedule=schedule(s, budget, num, den),
                            label=f"{keep}, stage {s + 1}/{len(layers)} of the paper's schedule")
            out.append(LayerSite(layer=layer + 1, keep=rule, score=score, name=f"sparsevlm-{s + 1}",
                                 method="sparsevlm", inputs=("q_all", "mask_all", "embeds")))
        return out
