"""Sites: where a method acts. Methods return sites (policy); passes apply them (mechanism)."""
from __future__ import annotations

import dataclasses
from typing import Callable

from .config import KeepRule


@dataclasses.dataclass(frozen=True)
class LayerSite:
    """Prune between decoder layers ``layer - 1`` and ``layer``.

    ``score(q, k, key_mask, scale, hidden, visual_mask, n_visual, n_keep) -> [B, L]`` gets layer
    ``layer - 1``'s attention inputs (q/k after RoPE, the last query row of its mask or None,
    the softmax scale), the hidden state entering ``layer``, the visual-token mask, the visual
    tokens per row and the number to keep; the top ``n_keep`` visual tokens by score survive.
    ``merge`` (optional) runs before removal: ``merge(hidden, visual_mask, keep_mask) -> hidden``
    may rewrite the kept tokens (e.g. fold removed tokens into them).
    Both are traced into the graph, so they must be plain torch code or ``torch.ops`` calls.
    """
    layer: int
    keep: KeepRule
    score: Callable
    name: str = "layer"
    merge: Callable | None = None


@dataclasses.dataclass(frozen=True)
class EncoderSite:
    """Select visual tokens on the spliced features, before the first decoder layer.

    ``score(features [B, V, D], n_keep, hidden [B, L, D], visual_mask [B, L]) -> [B, V]``: the
    top ``n_keep`` survive (``hidden`` is the spliced input embedding, text included).
    ``merge`` as for :class:`LayerSite`, on the spliced embedding.

    ``context=True``: the site reads the vision tower's internals (see
    :mod:`vtp_compile.vision_context`); both callables get one more argument,
    ``ctx = (cls_attn [n_img, N], upper [n_img, N, Dv], grid_h, grid_w)``,
    and ``merge`` also gets the ``[B, L]`` selection scores:
    ``merge(hidden, visual_mask, keep_mask, scores, ctx)``.
    """
    keep: KeepRule
    score: Callable
    name: str = "encoder"
    merge: Callable | None = None
    context: bool = False


@dataclasses.dataclass(frozen=True)
class ReserveSite(LayerSite):
    """A :class:`LayerSite` that also carries a reserve through the later layers (DSTP).

    The top ``keep`` visual tokens are *active*; the next ``reserve`` by score (None: as many as
    active) are computed in every later layer so their keys/values exist, but no non-reserve
    token attends to them during prefill. At each decode step the current query re-scores
    active ∪ reserve at layer ``layer - 1``; when the shift
    ``1 - mass(active) / mass(best keep)`` exceeds ``tau`` the active set becomes the best
    ``keep``. Decode steps attend to the active set plus every non-visual entry only.
    """
    reserve: int | None = None
    tau: float = 0.2


@dataclasses.dataclass(frozen=True)
class RouteSite:
    """Inside decoder layer ``layer``: the top ``keep`` visual tokens go through the layer, the
    others skip it unchanged; both streams are reintegrated before the next layer (ALVTS).

    ``build(wq, wk, w_norm, heads, kv_heads, calib) -> selector`` runs once at compile time on
    the layer's own weights (``calib``: a list of ``(hidden [B, L, D], visual_mask, n_keep)``
    from the example inputs, possibly empty) and returns a tuple of tensors;
    ``score(hidden, visual_mask, *selector) -> [B, L]`` is traced into the graph.
    """
    layer: int
    keep: KeepRule
    build: Callable
    score: Callable
    name: str = "route"
