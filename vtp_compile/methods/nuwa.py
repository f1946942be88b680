"""Nüwa (arXiv 2602.02951, ICLR 2026): spatial anchors in the encoder, then text-aware pruning.

Stage 1, an :class:`~vtp_compile.sites.EncoderSite` on the spliced features, reading the vision
tower's internals (:func:`vtp_compile.attach`):

- **separation**: each image's patch grid is cut into ``region x region`` blocks; the best
  ``ceil(anchors / blocks)`` tokens of every block by CLS attention at vision layer -2 (summed
  over heads) are candidates, and the top ``anchors`` candidates are kept;
- **alignment**: ``W_ij = ReLU(cos(u_i, u_j)) * (1 - min(d_ij / d_max, 1))`` with ``u`` the mean
  of the upper half of the vision layers' hidden states and ``d`` the patch-grid distance;
  ``d_max² = distance * max d²`` (``distance=0.265``: the paper's 280 on a 24x24 grid, scaled
  to the actual grid);
- **aggregation**: the top ``pillars`` fraction of anchors by score stay as they are; every
  other anchor becomes the ``W``-weighted mean of its image's visual tokens (self-weight 1).
  Kept tokens keep their positions, so RoPE still sees the whole image layout.

Stage 2, a :class:`~vtp_compile.sites.LayerSite` at ``layer`` (default: the middle decoder
layer): the top ``budget`` anchors by the attention the last token pays them (FastV's score).
``anchors`` defaults to ``ceil(1.75 * budget)`` (112/224/336 for budgets 64/128/192).

``vision_feature_select_strategy="full"`` (our reading; the paper drops the CLS token): each
image's CLS token is a visual token without a grid position. It is always an anchor (it takes
one of the ``anchors``; the patches compete for the rest, region by region) and is left as it
is: not a pillar nor a collector, and not in any collector's mean (the pillar fraction counts
the patch anchors). Stage 2 scores it like every other anchor.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch

from ..config import KeepRule
from ..sites import EncoderSite, LayerSite
from .base import Method
from .fastv import score as fastv_score
from .options import MethodOptions, method_options, opt
from .registry import register

ops = torch.ops.vtp
ANCHOR_FACTOR = Fraction(7, 4)


def _patch_mask(vis: torch.Tensor, per_image: int, lead: int) -> torch.Tensor:
    """The visual positions that are patches: each image's first ``lead`` visual tokens (its CLS
    token, ``vision_feature_select_strategy="full"``) are not."""
    if lead == 0:
        return vis
    local = (vis.long().cumsum(1) - 1) % per_image
    return vis & (local >= lead)


def _check_images_per_row(internals: torch.Tensor, rows) -> None:
    """Nüwa's kernels take one patch grid per row: every row must hold the same number of
    images. A batch whose images do not split evenly over its rows is refused here, while the
    graph is traced (a clear error instead of a failed reshape); one that splits evenly but not
    by row is refused at run time by the ``nuwa_aggregate`` check."""
    n = internals.shape[0]
    torch._check(n % rows == 0, lambda: f"vtp nuwa: every row must hold the same number of images "
                                        f"({n} images in {rows} rows)")


def anchor_scorer(region: int):
    def score(x):
        cls, _, gh, gw = x["ctx"][:4]
        vis = x["visual_mask"]
        B = vis.shape[0]
        per = cls.shape[-1]
        lead = per - gh * gw
        n_keep = x["n_keep"]
        patches = _patch_mask(vis, per, lead)
        if lead:
            # a kept CLS token is always an anchor (score above every patch's, ties by position);
            # the patches compete for the rest of the anchor budget
            n_img = vis.sum(1) // per
            n_keep = (n_keep - lead * n_img).clamp(min=0)
            cls = cls[:, lead:]
        _check_images_per_row(cls, B)
        vscores = ops.nuwa_anchor_scores(cls.reshape(B, -1), n_keep, gh, gw, region)
        out = torch.full(vis.shape, float("-inf"), dtype=torch.float32, device=vis.device)
        out = out.masked_scatter(patches, vscores)
        return out.masked_fill(vis & ~patches, 1.0) if lead else out
    return score


def aggregator(distance: float, pillars: float):
    def merge(x):
        cls, upper, gh, gw = x["ctx"][:4]
        hidden = x["hidden"]
        per = cls.shape[-1]
        lead = per - gh * gw
        vis = x["visual_mask"]
        patches = _patch_mask(vis, per, lead)
        # the CLS token has no grid position: never aggregated, never a member of a mean
        _check_images_per_row(upper, hidden.shape[0])
        up = upper[:, lead:].reshape(hidden.shape[0], -1, upper.shape[-1])
        return ops.nuwa_aggregate(hidden, patches, x["keep_mask"] & patches, x["scores"], up, gh, gw,
                                  distance, pillars)
    return merge


def anchor_rule(keep: KeepRule, anchors: int | None) -> KeepRule:
    if anchors is not None:
        return KeepRule(budget=anchors)
    if keep.budget is not None:
        return KeepRule(budget=math.ceil(keep.budget * ANCHOR_FACTOR))
    return KeepRule(ratio=min(Fraction(1), keep.ratio * ANCHOR_FACTOR))



@method_options
class NuwaOptions(MethodOptions):
    layer: int | None = opt(None, "stage 2 (FastV) prunes before this layer; None: half the depth")
    anchors: int | None = opt(None, "stage 1 anchors kept in the encoder; None: from the budget")
    region: int = opt(2, "block side, in patches, of the region separation")
    distance: float = opt(0.265, "alignment radius, as a fraction of the largest squared grid distance, in (0, 1]")
    pillars: float = opt(0.45, "fraction of anchors left unmodified (pillars), in [0, 1]")

    def check(self):
        self.check_int("layer", lo=1, optional=True)
        self.check_int("anchors", lo=1, optional=True)
        self.check_int("region", lo=1)
        self.check_number("distance", 0, 1, low_open=True)
        self.check_number("pillars", 0, 1)


@register
class Nuwa(Method):
    """Nüwa: region-separated spatial anchors aggregated in the encoder, FastV at mid-depth."""
    name = "nuwa"
    paper = "arXiv 2602.02951"
    vision_internals = True
    options = NuwaOptions

    def sites(self, cfg, num_layers):
        p = cfg.params
        layer = p["layer"] if p["layer"] is not None else max(1, num_layers // 2)
        stage1 = EncoderSite(keep=anchor_rule(cfg.keep, p["anchors"]), name="nuwa-anchors", method="nuwa",
                             score=anchor_scorer(p["region"]), context=True,
                             merge=aggregator(float(p["distance"]), float(p["pillars"])))
        stage2 = LayerSite(layer=layer, keep=cfg.keep, score=fastv_score, name="nuwa", method="nuwa")
        return [stage1, stage2]
