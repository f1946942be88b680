"""Random selection at the encoder site: a sanity baseline a real method must beat.

The "random" scores are a fixed hash of (sample, visual index, seed), so a run is reproducible
and the compiled graph matches an eager reference exactly.
"""
from __future__ import annotations

import torch

from ..sites import EncoderSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import register


def hash_scores(visual_mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``[B, L]``: a fixed hash of (row, index among the row's visual tokens, seed)."""
    B = visual_mask.shape[0]
    j = (visual_mask.long().cumsum(1) - 1).double()
    row = torch.arange(B, device=visual_mask.device, dtype=torch.float64)[:, None]
    x = torch.sin(j * 12.9898 + row * 78.233 + seed * 37.719) * 43758.5453
    return (x - torch.floor(x)).float()


def score(x):
    return hash_scores(x["visual_mask"], 0)


@method_options
class RandomOptions(MethodOptions):
    seed: int = opt(0, "seed of the hash scores (the same seed keeps the same tokens)")

    def check(self):
        self.check_int("seed", lo=0)


@register
class RandomSelect(Method):
    """Seeded hash scores at the encoder site: the sanity baseline."""
    name = "random"
    paper = "baseline"
    options = RandomOptions
    per_frame_ok = True

    def sites(self, cfg, num_layers):
        seed = cfg.params["seed"]
        fn = score if seed == 0 else _seeded(seed)
        return [EncoderSite(keep=cfg.keep, score=fn, name="random")]


_SEEDED = {}


def _seeded(seed: int):
    if seed not in _SEEDED:
        def fn(x):
            return hash_scores(x["visual_mask"], seed)
        fn.__name__ = f"random_score_seed{seed}"
        _SEEDED[seed] = fn
    return _SEEDED[seed]
