"""DCP-Prune (arXiv 2606.16633): distribution-consistent pruning for ultra-low budgets.

Four steps at one site (``site="layer"``, default before decoder layer 2, or ``site="encoder"``
on the spliced visual features):

1. **Base selection** — text-aware scores: at a layer site the attention the last token pays
   each visual token in the previous layer (FastV's score); at the encoder site the softmax over
   visual tokens of ``x_last · f_v / sqrt(D)`` (the last prompt token's embedding against each
   projected visual feature). Top-k.
2. **κ** — distribution consistency of the kept set against all visual tokens (mean distance
   plus std-norm gap, see :func:`vtp_compile.kernels.reference.dist_consistency`); logged per
   call at debug level (``VTP_LOG=debug``).
3. **TATCS** — when κ > ``tau`` the sample re-selects: spherical k-means of all visual tokens
   into k clusters (``iters`` rounds, initialised from the base top-k in score order), and the
   most text-relevant token of each cluster. Both selections are computed and one is picked
   per sample with ``torch.where``: no branch in the graph.
4. **ACGR** — before removal each removed token folds its features into its ``m`` most
   similar kept tokens (softmax-normalised cosine weights).
"""
from __future__ import annotations

import torch

from ..kernels.ties import round_scores
from ..sites import EncoderSite, LayerSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import register

ops = torch.ops.vtp
SITES = ("layer", "encoder")


def _reselect(features, base, valid, n_keep, tau: float, iters: int, tag: str):
    """Base scores, or TATCS cluster scores where κ(base top-k) > tau; ``[B, N]`` float32.
    Scores are ranked at 12 significant bits (``kernels.ties.round_scores``: equal scores tie
    exactly on every backend, position order decides)."""
    base = round_scores(base)
    base_kept = ops.topk_mask(base, valid, n_keep)
    kappa = ops.dist_consistency(features, valid, base_kept, tag)
    cluster = ops.cluster_select_scores(features, base, valid, n_keep, iters)
    base = base.float().masked_fill(~valid, float("-inf"))
    return torch.where((kappa > tau)[:, None], cluster, base)


def layer_scorer(tau: float, iters: int):
    def score(x):
        base = ops.attn_row_scores(x["q"], x["k"], x["key_mask"], x["scale"], -1)
        vis = x["visual_mask"]
        k = torch.minimum(x["n_keep"], vis.sum(1))
        return _reselect(x["hidden"], base, vis, k, tau, iters, "acgr@layer")
    return score


def encoder_scorer(tau: float, iters: int):
    def score(x):
        hidden, vis = x["hidden"].float(), x["visual_mask"]
        B, L, D = hidden.shape
        last = torch.gather(hidden, 1, x["qpos"].view(B, 1, 1).expand(B, 1, D))   # [B, 1, D]
        logits = (hidden @ last.transpose(1, 2))[..., 0] * D ** -0.5               # [B, L]
        base = logits.masked_fill(~vis, float("-inf")).softmax(-1).nan_to_num(0.0)
        k = torch.minimum(x["n_keep"], vis.sum(1))
        return _reselect(x["hidden"], base, vis, k, tau, iters, "acgr@encoder")
    return score


def merger(m: int):
    def merge(x):
        return ops.anchor_merge(x["hidden"], x["visual_mask"], x["keep_mask"], m)
    return merge


@method_options
class DCPOptions(MethodOptions):
    site: str = opt("layer", "where it selects: 'layer' (text-aware, at `layer`) or 'encoder'")
    layer: int = opt(2, "prune before this decoder layer (site 'layer')")
    tau: float = opt(0.3, "κ threshold above which TATCS re-selects by clustering (0: always, large: never)")
    m: int = opt(3, "ACGR: kept tokens (most similar) each removed token is merged into")
    iters: int = opt(5, "spherical k-means rounds of the re-selection")
    merge: bool = opt(True, "merge removed tokens into kept ones (ACGR)")

    def check(self):
        self.check_choice("site", SITES)
        self.check_int("layer", lo=1)
        self.check_int("m", lo=1)
        self.check_int("iters", lo=0)
        self.check_number("tau", 0, float("inf"))
        self.check_bool("merge")


@register
class DCPPrune(Method):
    """DCP-Prune: text-aware top-k, κ-triggered cluster re-selection (TATCS), ACGR merging."""
    name = "acgr"
    aliases = ("dcp",)
    paper = "arXiv 2606.16633"
    options = DCPOptions

    def sites(self, cfg, num_layers):
        p = cfg.params
        merge = merger(p["m"]) if p["merge"] else None
        if p["site"] == "encoder":
            return [EncoderSite(keep=cfg.keep, score=encoder_scorer(float(p["tau"]), p["iters"]),
                                name="acgr", merge=merge)]
        return [LayerSite(layer=p["layer"], keep=cfg.keep, name="acgr", merge=merge,
                          score=layer_scorer(float(p["tau"]), p["iters"]))]
