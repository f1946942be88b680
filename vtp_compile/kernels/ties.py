"""Near-ties made exact before anything is ranked, so that every lowering (eager, Inductor,
the CUDA kernels) ranks alike: tokens that repeat each other (a uniform background, repeated
tiles or frames) give scores and similarities that are equal in exact arithmetic and differ by
~1e-8 from one backend to another; on a grid they tie exactly and position order decides."""
from __future__ import annotations

import torch

SIM_STEPS = 4096    # cosines are compared on a 1/4096 grid (half up)
SCORE_BITS = 12     # scores are compared at 12 significant bits (half up in magnitude)


def sim_grid(sim: torch.Tensor) -> torch.Tensor:
    """Cosine similarities rounded half up to the nearest ``1/SIM_STEPS``."""
    return torch.floor(sim * SIM_STEPS + 0.5) / SIM_STEPS


def round_scores(scores: torch.Tensor) -> torch.Tensor:
    """float32 scores rounded to ``SCORE_BITS`` significant bits (relative ~2.4e-4, half up in
    magnitude; ±inf and 0 stay): a bit-level round, the same on every backend."""
    drop = 24 - SCORE_BITS                   # float32 carries 24 significant bits
    bits = scores.float().contiguous().view(torch.int32)
    return ((bits + (1 << (drop - 1))) & ~((1 << drop) - 1)).view(torch.float32)
