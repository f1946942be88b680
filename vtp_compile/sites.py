"""Sites: where a method acts. Methods return sites (policy); passes apply them (mechanism)."""
from __future__ import annotations

import dataclasses
from typing import Callable

from .config import KeepRule


@dataclasses.dataclass(frozen=True)
class LayerSite:
    """Prune between decoder layers ``layer - 1`` and ``layer``.

    ``score(q, k, key_mask, scale, hidden, visual_mask) -> [B, L]`` gets layer ``layer - 1``'s
    attention inputs (q/k after RoPE, the last query row of its mask or None, the softmax
    scale), the hidden state entering ``layer`` and the visual-token mask; the top ``keep``
    visual tokens by score survive. It is traced into the graph, so it must be plain torch code
    or ``torch.ops`` calls.
    """
    layer: int
    keep: KeepRule
    score: Callable
    name: str = "layer"


@dataclasses.dataclass(frozen=True)
class EncoderSite:
    """Select visual tokens on the spliced features, before the first decoder layer.

    ``score(features [B, V, D], n_keep) -> [B, V]``: the top ``n_keep`` survive.
    """
    keep: KeepRule
    score: Callable
    name: str = "encoder"
