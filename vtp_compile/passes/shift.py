"""DSTP's mechanism: a reserve carried through prefill, and shift-aware masks in decode graphs.

Prefill (after :func:`compact.apply_site` kept active + reserve tokens): every attention from
the site on gets a mask under which no non-reserve query sees a reserve key, the reserve's
outputs are reintegrated with the hidden state they had at the site (so prefill logits equal
the base method's exactly), and the cache layout is recorded in :mod:`vtp_compile.shift_state`.

Decode: every layer's attention is restricted to non-visual and active cache columns; at layer
``K - 1`` the current query re-scores active ∪ reserve and may swap the active set, which the
layers from ``K`` on use at once and every layer uses from the next step on.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..graph import tp
from ..graph.fx_utils import Unsupported, insert_after, sdpa_args, set_sdpa_mask, tensor_val
from ..graph.vlm_graph import VLMGraph
from ..sites import ReserveSite
from . import traced
from .compact import SiteNodes, scaled_query, scoring_layer
from .kv import Layouts

ops = torch.ops.vtp


# ---- helpers traced into the graph -----------------------------------------------------------
def active_count(n_keep, visual_mask):
    return torch.minimum(n_keep, visual_mask.sum(1))


def reserve_positions(visual_mask, active, idx, slot_live):
    """``[B, L]`` bool: kept visual positions that are not active (the reserve)."""
    return visual_mask & ~active & traced.kept_positions(idx, slot_live, visual_mask)


def reserve_mask(mask, reserve, causal: bool):
    """The prefill mask from the site on: nobody outside the reserve attends to the reserve."""
    L = reserve.shape[1]
    allow = ~(reserve[:, None, :] & ~reserve[:, :, None])               # [B, Lq, Lk]
    if mask is None:
        base = torch.ones(L, L, dtype=torch.bool, device=reserve.device)
        base = base.tril() if causal else base
        return allow[:, None] & base
    if mask.dtype == torch.bool:
        return mask & allow[:, None]
    return mask.masked_fill(~allow[:, None], float("-inf"))


def keep_reserve_out(full, entry, reserve_full):
    """Reserve positions leave with the hidden state they had at the site (as if pruned)."""
    return torch.where(reserve_full[..., None], entry.to(full.dtype), full)


def last_query_row(mask):
    """The attention-mask row of a decode step's (last) query: ``[B or 1, S]``."""
    row = mask[..., -1, :]
    while row.dim() > 2:
        row = row[:, 0]
    return row


def column_mask(mask, cols):
    """A decode step's mask restricted to ``cols`` ``[B, S]``."""
    c = cols[:, None, None, :]
    if mask is None:
        return c
    if mask.dtype == torch.bool:
        return mask & c
    return mask.masked_fill(~c, float("-inf"))


def _remask(g: fx.Graph, sdpas: list, fn, extra) -> None:
    """Give each SDPA call ``fn(its mask, *extra)``; calls sharing a mask share the new one."""
    made = {}
    for sdpa in sdpas:
        a = sdpa_args(sdpa)
        m = a["attn_mask"]
        k = (m, bool(a["is_causal"]), extra)
        if k not in made:
            with g.inserting_before(sdpa):
                made[k] = g.call_function(fn, (m, *extra))
        set_sdpa_mask(sdpa, made[k], causal=False)


# ---- prefill ------------------------------------------------------------------------------------
def check_layout(vlm: VLMGraph, layouts: Layouts) -> None:
    """DSTP hides its reserve from every query by attention masks, and its decode masks address
    one cache layout shared by every attention layer. Layers that mix tokens without attention
    (linear attention) cannot be masked; layers whose cache keeps another layout (a sliding
    window of positions) cannot be addressed by cache column."""
    for lv in vlm.layers:
        if lv.sdpa is None:
            raise Unsupported(f"dstp: layer {lv.index} mixes tokens without attention (linear "
                              "attention); the reserve DSTP carries through prefill, hidden from "
                              "attention by masks, would reach it")
    for lay in layouts:
        if not lay.compacted:
            raise Unsupported(f"dstp: layer {lay.lv.index} keeps its cache as a {lay.kind} (a "
                              "sliding window of positions); DSTP's active/reserve columns address "
                              "one compacted cache layout for every layer, which such layers do "
                              "not have")


def apply_reserve(vlm: VLMGraph, site: ReserveSite, nodes: SiteNodes, key: str) -> None:
    g = vlm.gm.graph
    K = site.layer
    k0 = sdpa_args(vlm.layers[0].sdpa)["key"]
    with insert_after(g, nodes.anchor):
        vis = g.call_function(operator.and_, (nodes.visual_mask, nodes.live))
        n_act = g.call_function(active_count, (nodes.n_keep, vis))
        active = g.call_function(ops.topk_mask.default, (nodes.scores, vis, n_act))
        active_c = g.call_function(traced.compact_visual, (active, nodes.idx, nodes.slot_live))
        visual_c = g.call_function(traced.compact_visual, (vis, nodes.idx, nodes.slot_live))
        keys_c = g.call_function(ops.gather_seq.default, (k0, nodes.idx, 2, 0))
        reserve_c = g.call_function(ops.dstp_begin.default,
                                    (active_c, visual_c, nodes.slot_live, keys_c, n_act,
                                     float(site.tau), key))
        reserve_full = g.call_function(reserve_positions, (vis, active, nodes.idx, nodes.slot_live))
    causal = {bool(sdpa_args(lv.sdpa)["is_causal"]) for lv in vlm.layers[K:]}
    if len(causal) != 1:
        raise Unsupported("layers disagree on is_causal")
    _remask(g, [lv.sdpa for lv in vlm.layers[K:]], reserve_mask, (reserve_c, causal.pop()))
    for full in nodes.exits:
        with insert_after(g, full):
            out = g.call_function(keep_reserve_out, (full, nodes.entry, reserve_full))
        for u in list(full.users):
            if u is not out:
                u.replace_input_with(full, out)
    g.lint()


# ---- decode -------------------------------------------------------------------------------------
def apply_shift(vlm: VLMGraph, site: ReserveSite, key: str, layouts: Layouts) -> None:
    g = vlm.gm.graph
    K = site.layer
    if not (0 if site.own_attention else 1) <= K < vlm.num_layers:
        return
    attn = vlm.attention_layers
    first = attn[0].sdpa
    k0 = sdpa_args(first)["key"]
    check_layout(vlm, layouts)     # as the prefill did: no reserve state exists for such a model
    with g.inserting_before(first):
        cols = g.call_function(ops.dstp_columns.default, (k0, key))
    # re-score with the attention the base scores with: the last attention layer before K
    # (K-1 unless that one has none), or K's own
    lv_score = vlm.layers[K] if site.own_attention else scoring_layer(vlm, K, site)
    score_layer = lv_score.sdpa
    a = sdpa_args(score_layer)
    with g.inserting_before(score_layer):
        m = a["attn_mask"]
        row = g.call_function(last_query_row, (m,)) if isinstance(m, fx.Node) else None
        # every rank re-scores with every head: the swap decision is the same everywhere
        q, k = tp.full_heads(g, vlm.tp, lv_score.nodes, a["query"], a["query"], a["key"])
        q, scale = scaled_query(g, q, a)
        new_cols = g.call_function(ops.dstp_update.default, (q, k, row, scale, cols, key))
    _remask(g, [lv.sdpa for lv in attn if lv.index < K], column_mask, (cols,))
    _remask(g, [lv.sdpa for lv in attn if lv.index >= K], column_mask, (new_cols,))
    g.lint()
