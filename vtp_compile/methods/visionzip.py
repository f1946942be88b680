"""VisionZip (Yang et al., CVPR'25, arXiv 2412.04467): dominant tokens plus merged context.

An :class:`~vtp_compile.sites.EncoderSite` on the spliced features that reads the vision tower's
internals (:func:`vtp_compile.attach`) of vision layer ``vision_layer`` (default None: the layer
attach read, -2 on CLIP/SigLIP towers, the last block on Qwen towers). Row ``b`` keeps ``k``
visual tokens:

- **dominant**: the top ``k - c`` by the CLS attention summed over heads (``score="cls"``), or,
  the CLS-free variant (``score="received"``), by the attention each patch *receives*, averaged
  over every query and head; on a tower without CLS (SigLIP, Qwen) ``"cls"`` is the received
  attention too (summed over heads: the same ranking); on Qwen towers per merged token (the mean
  over its ``spatial_merge_size²`` patches; in a windowed block the queries of its window);
- **contextual**: ``c = round(k * contextual)`` (default 5/32: the paper's 54 + 10 of 64,
  108 + 20 of 128, 162 + 30 of 192) targets picked by a uniform stride over the remaining
  tokens in position order; every other remaining token joins the target whose key (vision
  layer keys, mean over heads, L2-normalised) is the most similar, and a target with members
  becomes ``x_t + mean(members)``.

It reads the internals per token, never the patch grid (``EncoderSite(grid=False)``), so a Qwen
batch with images of different sizes is pruned too.

Kept tokens keep their positions (the paper appends the contextual tokens after the dominant
ones); the merge acts on the projected features the language model receives (the paper merges
the vision tower's hidden states before the projector).
"""
from __future__ import annotations

from fractions import Fraction

import torch

from ..errors import OptionError
from ..sites import EncoderSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import register

ops = torch.ops.vtp
SCORES = ("cls", "received")


def _per_position(t: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
    """``[n_img, N, *rest]`` (image after image, as spliced) -> ``[B, L, *rest]`` at the visual
    positions, zeros elsewhere."""
    rest = t.shape[2:]
    flat = t.reshape(-1, *rest).float()
    out = flat.new_zeros((*visual_mask.shape, *rest))
    m = visual_mask.reshape(*visual_mask.shape, *([1] * len(rest))).expand_as(out)
    return out.masked_scatter(m, flat)


def scorer(which: str, ctx: Fraction):
    def score(x):
        cls, _, _, _, _, received = x["ctx"]
        dom = _per_position(cls if which == "cls" else received, x["visual_mask"])
        return ops.visionzip_scores(dom, x["visual_mask"], x["n_keep"], ctx.numerator, ctx.denominator)
    score.__name__ = f"visionzip_score_{which}_{ctx.numerator}_{ctx.denominator}"
    return score


def merge(x):
    keys = _per_position(x["ctx"][4], x["visual_mask"])
    return ops.visionzip_merge(x["hidden"], x["visual_mask"], x["keep_mask"], x["scores"], keys)


def contextual_fraction(v) -> Fraction:
    if isinstance(v, bool) or not isinstance(v, (int, float, Fraction)) or not 0 <= v < 1:
        raise OptionError(f"vtp: option 'contextual' must be a number in [0, 1), got {v!r}")
    return Fraction(v).limit_denominator(10_000)


@method_options
class VisionZipOptions(MethodOptions):
    contextual: float = opt(0.15625, "fraction of the kept tokens that are contextual (merged) tokens, in [0, 1)")
    score: str = opt("cls", "dominant-token score: 'cls' (CLS attention) or 'received' (attention received)")
    vision_layer: int | None = opt(None, "vision layer whose attention is read; None: the tower's default")

    def check(self):
        contextual_fraction(self.contextual)
        self.check_choice("score", SCORES)
        self.check_int("vision_layer", optional=True)


@register
class VisionZip(Method):
    """VisionZip: dominant tokens by vision-tower attention, the rest merged into a few contextual
    tokens by key similarity."""
    name = "visionzip"
    paper = "CVPR 2025 (arXiv 2412.04467)"
    vision_internals = True
    options = VisionZipOptions

    def sites(self, cfg, num_layers):
        p = cfg.params
        frac = contextual_fraction(p["contextual"])
        return [EncoderSite(keep=cfg.keep, score=scorer(p["score"], frac), merge=merge, context=True,
                            name="visionzip", method="visionzip", vision_layer=p["vision_layer"],
                            grid=False)]
