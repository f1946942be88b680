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

``recycle=True`` (v1): at each stage the top 30 % (+1) of the pruned tokens by rater score are
recycled: the best ``n/10 + 1`` of them are kept as cluster representatives, every other recycled
token is merged (mean) into its most cosine-similar representative (hidden states entering the
stage). The paper appends the merged tokens after the kept ones; here each stays at its
representative's position (positions are never renumbered), and the clustering is this
nearest-representative assignment (the official code's clustering is not specified in the paper).
"""
from __future__ import annotations

import torch

from .. import kernels  # noqa: F401  (registers torch.ops.vtp.*)
from ..config import KeepRule
from ..errors import OptionError
from ..sites import LayerSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import register
from ..kernels.sparsevlm import recycle_count

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


def schedule(stage: int, budget: int, num: int, den: int, recycle: bool = False):
    """Stage ``stage``'s (0-based) kept count per row (see :mod:`..kernels.sparsevlm`); with
    ``recycle``, plus the clusters its pruned tokens are merged into."""
    def sparsevlm_count(n_now, n_orig):
        if not isinstance(n_orig, torch.Tensor):
            return int(sparsevlm_count(torch.tensor([int(n_now)]), torch.tensor([int(n_orig)]))[0])
        k = ops.sparsevlm_keep(n_orig, stage, budget, num, den)
        if not recycle:
            return k
        k = torch.minimum(k, n_now)
        return k + recycle_count(n_now - k)[1]
    sparsevlm_count.__name__ = f"sparsevlm_count_stage{stage + 1}" + ("_recycle" if recycle else "")
    return sparsevlm_count


def score(x):
    """The raters' head-mean attention at the stage layer (``x``: see :mod:`..sites`)."""
    return ops.sparsevlm_scores(x["q_all"], x["k"], x["mask_all"], x["scale"], x["embeds"],
                                x["visual_mask"], x["live"])


def recycling_score(stage: int, budget: int, num: int, den: int):
    """v1: the stage's top-k first, then its cluster representatives, then the recycled."""
    def score_recycle(x):
        k = ops.sparsevlm_keep(x["n_orig"], stage, budget, num, den)
        return ops.sparsevlm_recycle_rank(score(x), x["visual_mask"], x["live"], k)
    score_recycle.__name__ = f"sparsevlm_recycle_score_stage{stage + 1}"
    return score_recycle


def recycle_merge(x):
    """v1: recycled tokens merged (mean) into their most similar representative."""
    return ops.sparsevlm_recycle_merge(x["hidden"], x["visual_mask"], x["keep_mask"], x["scores"])


def stage_counts(V: int, n_stages: int, budget: int | None = None, ratio=None,
                 recycle: bool = False) -> list[int]:
    """Per-stage kept counts for ``V`` visual tokens (reports, explain, tests)."""
    from fractions import Fraction
    num, den = 0, 1
    if budget is None:
        r = Fraction(ratio if ratio is not None else Fraction(1, 9)).limit_denominator(10_000)
        num, den = r.numerator, r.denominator
    out, now = [], V
    for s in range(n_stages):
        now = min(now, schedule(s, budget or 0, num, den, recycle)(now, V))
        out.append(now)
    return out


@method_options
class SparseVLMOptions(MethodOptions):
    layers: tuple | None = opt(None, "1-3 scoring layers (strictly increasing); each stage prunes from the next layer; None: the paper's, scaled to the depth")
    recycle: bool = opt(False, "merge the removed tokens into a few recycled cluster tokens (the paper's recycling)")

    def check(self):
        self.check_bool("recycle")
        self.check_layers("layers", most=3, what="decoder layer indices (the scoring layers)")


@register
class SparseVLM(Method):
    """SparseVLM: rater-attention scores at three stage layers; paper-shaped stage counts."""
    name = "sparsevlm"
    paper = "ICML 2025 (arXiv 2410.04417)"
    options = SparseVLMOptions

    def sites(self, cfg, num_layers):
        layers = list(cfg.params["layers"] or default_layers(num_layers))
        if not layers or layers[-1] + 1 >= num_layers:
            raise OptionError(f"vtp: sparsevlm layers {layers} out of range; this model has "
                              f"{num_layers} decoder layers and a stage prunes from the layer after "
                              f"its scoring layer, so the layers must be at most {num_layers - 2}")
        keep = cfg.keep
        budget = keep.budget or 0
        num, den = (0, 1) if keep.budget else (keep.ratio.numerator, keep.ratio.denominator)
        recycle = cfg.params["recycle"]
        out = []
        for s, layer in enumerate(layers):
            rule = KeepRule(schedule=schedule(s, budget, num, den, recycle),
                            label=f"{keep}, stage {s + 1}/{len(layers)} of the paper's schedule"
                                  + (" + recycled clusters" if recycle else ""))
            if recycle:
                site = LayerSite(layer=layer + 1, keep=rule, score=recycling_score(s, budget, num, den),
                                 merge=recycle_merge, name=f"sparsevlm-{s + 1}", method="sparsevlm",
                                 inputs=("q_all", "mask_all", "embeds", "n_orig"))
            else:
                site = LayerSite(layer=layer + 1, keep=rule, score=score, name=f"sparsevlm-{s + 1}",
                                 method="sparsevlm", inputs=("q_all", "mask_all", "embeds"))
            out.append(site)
        return out
