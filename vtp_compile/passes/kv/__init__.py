"""KV layouts: what each decoder layer's cache holds after a pruned prefill, decided once per
layer by :func:`analyse` (see :mod:`.base` for what a layout owns)."""
from __future__ import annotations

from ...graph.cache_nodes import buffer_of, is_cache_update, static_writes, window_slice
from ...graph.fx_utils import is_static_cache_write, sdpa_args
from ...graph.vlm_graph import VLMGraph
from . import static
from .base import Eviction, KVLayout, Layouts, NoCache, TokenMixing
from .compacted import CompactedCache
from .static import StaticBuffer
from .window import PositionalWindow

__all__ = ["analyse", "KVLayout", "Layouts", "Eviction", "NoCache", "TokenMixing", "CompactedCache",
           "PositionalWindow", "StaticBuffer"]


def analyse(vlm: VLMGraph) -> Layouts:
    """Each layer's layout; refuses (``StaticCacheUnsupported``) static-cache forms the
    positional layout does not cover."""
    g = vlm.gm.graph
    if any(is_static_cache_write(n) for n in g.nodes):
        static.check_graph(g)
    return Layouts([_layout(lv) for lv in vlm.layers])


def _layout(lv) -> KVLayout:
    if lv.sdpa is None:
        return TokenMixing(lv)
    if static_writes(lv.nodes) or buffer_of(sdpa_args(lv.sdpa)["value"]) is not None:
        return StaticBuffer(lv)
    updates = [n for n in lv.nodes if is_cache_update(n)]
    if any(window_slice(n) is not None for n in updates):
        return PositionalWindow(lv)
    if updates:
        return CompactedCache(lv)
    return NoCache(lv)
