"""DyCoke (Tao et al., CVPR'25, arXiv 2411.15024): temporal token merging, then (optionally)
dynamic KV cache reduction in decode steps.

Stage 1, at the encoder site: frames of a clip go in windows of four; the first of a window is
kept as the reference, the others drop the tokens that repeat the token at the same place of an
earlier frame of the window (lowest ``1 - cos`` first; :mod:`vtp_compile.kernels.dycoke`). The
row's kept count goes to the reference frames first, then evenly to the other frames (at least
``min_per_frame`` each).

Stage 2, with ``kv_keep`` set (the paper uses 0.2: its pruning rate ``p`` = 0.8), in decode steps
only: each step, the current token's head-mean attention at layer ``kv_layer - 1`` over the
prompt's visual tokens picks the ``kv_keep`` most attended; layers from ``kv_layer`` on read those
and every text token, the earlier layers the whole cache. A step re-picks only when its
attention's cosine similarity with the previous step's is below ``kv_similarity`` (0.9);
otherwise the previous pick stays (:class:`~vtp_compile.sites.DecodeSite`).

Departures (docs/video.md): the budget is the row's instead of a fixed per-frame ratio; the
authors' loop leaves some frames of the last window whole or drops an odd last frame, this does
neither; in stage 2, on a step whose attention is similar enough, the authors' code reads the
whole cache in every layer (its pick is reset at layer 0 of each step and only rebuilt on a
re-pick), vtp keeps the previous pick, as the paper describes; stage 2 is off by default.
"""
from __future__ import annotations

import torch

from ..sites import DecodeSite, EncoderSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import register


def scorer(min_per_frame: int):
    def score(x):
        cand = x["visual_mask"] & x["live"]
        return torch.ops.vtp.dycoke_scores(x["hidden"], x["frames"], cand, min_per_frame)
    score.__name__ = f"dycoke_score_m{min_per_frame}"
    return score


@method_options
class DyCokeOptions(MethodOptions):
    kv_keep: float | None = opt(None, "stage 2: fraction of the prompt's visual tokens each decode "
                                      "step reads from layer kv_layer on, in (0, 1] (paper: 0.2); "
                                      "None: stage 2 off")
    kv_layer: int = opt(3, "stage 2: the first layer that reads only the picked visual tokens "
                           "(scored at kv_layer - 1)")
    kv_similarity: float = opt(0.9, "stage 2: a step re-picks when its attention's cosine "
                                    "similarity with the previous step's is below this, in [0, 1]")

    def check(self):
        if self.kv_keep is not None:
            self.check_number("kv_keep", 0, 1, low_open=True)
        self.check_int("kv_layer", lo=1)
        self.check_number("kv_similarity", 0, 1)


@register
class DyCoke(Method):
    """DyCoke's temporal token merging (reference frames kept, repeats in the others dropped) and,
    with ``kv_keep``, its decode-time KV cache reduction."""
    name = "dycoke"
    paper = "CVPR 2025 (arXiv 2411.15024)"
    options = DyCokeOptions
    reads_frames = True
    own_frame_allocation = "reference frames first, then the others evenly"

    def cuda_graphs_refusal(self, params):
        if params["kv_keep"] is None:
            return None
        return ("its stage 2 (kv_keep) reads and replaces runtime state kept in Python at every "
                "decode step (vtp_compile.shift_state), which a CUDA graph replay would skip")

    def sites(self, cfg, num_layers):
        rule = cfg.keep.frames
        p = cfg.params
        sites = [EncoderSite(keep=cfg.keep, score=scorer(rule.min_per_frame), name="dycoke",
                             inputs=("frames",))]
        if p["kv_keep"] is not None:
            sites.append(DecodeSite(layer=p["kv_layer"], ratio=float(p["kv_keep"]),
                                    similarity=float(p["kv_similarity"]), name="dycoke-kv",
                                    method="dycoke"))
        return sites
