"""A :class:`~vtp_compile.sites.DecodeSite` (DyCoke's stage 2): prefill records, decode picks.

Prefill (after every compaction): ``vtp::decode_select_begin`` records which columns of the
cache the prefill leaves are visual (the compacted layout of the last site), with a fingerprint
of layer 0's keys (:mod:`vtp_compile.shift_state`). Nothing else changes: prefill logits are
those of the other sites.

Decode: at the last attention layer before ``layer`` the step's query scores every column
(``vtp::decode_select``, :mod:`vtp_compile.kernels.decode_select`); the attention calls from
``layer`` on read the non-visual columns and the picked visual ones, through their masks (set
after :class:`~vtp_compile.passes.pipeline.DecodeMasks`, which already hides dead slots).

Where the pick cannot be expressed (a layer from ``layer`` on that mixes tokens without
attention, a hybrid model's, or a cache that is not in the compacted layout: a sliding window of positions, a
static buffer), the site is skipped with one log line: the other sites still run and decode
steps read the whole cache.
"""
from __future__ import annotations

import logging

import torch
import torch.fx as fx

from ..errors import OptionError
from ..graph import tp
from ..graph.fx_utils import sdpa_args
from ..graph.vlm_graph import VLMGraph
from ..sites import DecodeSite, method_of
from .compact import scaled_query, scoring_layer
from .kv import Layouts
from .shift import _remask, column_mask, last_query_row

log = logging.getLogger("vtp_compile")
ops = torch.ops.vtp
_LOGGED: set = set()


def check_layer(vlm: VLMGraph, site: DecodeSite) -> None:
    if not 1 <= site.layer < vlm.num_layers:
        raise OptionError(f"vtp: {method_of(site)}'s decode layer {site.layer} is out of range; this "
                          f"model has {vlm.num_layers} decoder layers, so it must be in "
                          f"[1, {vlm.num_layers - 1}]")


def why_not(vlm: VLMGraph, site: DecodeSite, layouts: Layouts) -> str | None:
    """Why this model's decode steps cannot take the pick (None: they can)."""
    for lv in vlm.layers:
        if lv.sdpa is None:
            return f"layer {lv.index} mixes tokens without attention (no mask can hide a column)"
    for lay in layouts:
        if not lay.compacted:
            return (f"layer {lay.lv.index} keeps its cache as a {lay.kind}, not in the compacted "
                    "layout the pick addresses")
    return None


def _skip(site: DecodeSite, why: str) -> None:
    if why not in _LOGGED:
        _LOGGED.add(why)
        log.warning("vtp: %s's decode-time selection is skipped on this model (%s); its other "
                    "sites run and decode steps read the whole cache", method_of(site), why)


def record(vlm: VLMGraph, site: DecodeSite, state, layouts: Layouts, key: str) -> bool:
    """Prefill: record the cache's visual columns; False when skipped (logged)."""
    check_layer(vlm, site)
    why = why_not(vlm, site, layouts)
    if why is not None:
        _skip(site, why)
        return False
    g = vlm.gm.graph
    sdpa = vlm.attention_layers[0].sdpa
    k0 = sdpa_args(sdpa)["key"]
    with g.inserting_before(sdpa):
        rec = g.call_function(ops.decode_select_begin.default,
                              (k0, state.visual_mask, state.live, float(site.ratio),
                               float(site.similarity), key))
    sdpa.replace_input_with(k0, rec)
    g.lint()
    return True


def apply(vlm: VLMGraph, site: DecodeSite, layouts: Layouts, key: str) -> bool:
    """Decode: pick at the scoring layer, restrict the layers from ``site.layer`` on; False when
    skipped."""
    if not 1 <= site.layer < vlm.num_layers or why_not(vlm, site, layouts) is not None:
        return False
    g = vlm.gm.graph
    attn = vlm.attention_layers
    k0 = sdpa_args(attn[0].sdpa)["key"]
    lv = scoring_layer(vlm, site.layer, site)
    a = sdpa_args(lv.sdpa)
    with g.inserting_before(lv.sdpa):
        m = a["attn_mask"]
        row = g.call_function(last_query_row, (m,)) if isinstance(m, fx.Node) else None
        # every rank scores with every head: the pick is the same everywhere
        q, k = tp.full_heads(g, vlm.tp, lv.nodes, a["query"], a["query"], a["key"])
        q, scale = scaled_query(g, q, a)
        cols = g.call_function(ops.decode_select.default, (q, k, row, scale, k0, key))
    _remask(g, [x.sdpa for x in attn if x.index >= site.layer], column_mask, (cols,))
    g.lint()
    return True
