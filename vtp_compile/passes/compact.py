"""Sequence compaction: the mechanism behind ``LayerSite`` and ``EncoderSite``.

At the entry of decoder layer K: score, select each row's kept positions (its live non-visual
tokens plus its top-k visual ones, in position order; padding is evicted), gather the hidden
state and every per-sequence tensor the later layers read (rotary tables, masks, position ids)
into the compacted layout (:mod:`vtp_compile.kernels.select`: kept tokens, then dead slots),
rewrite the sequence sizes in later shape arguments, restrict attention masks to live slots, and
at the exit scatter the survivors back into the full-length hidden state so that the graph's
outputs keep their shapes (pruned positions keep the hidden state they had when they left).
What each layer's KV cache holds, and every edit that depends on it, is its layout's
(:mod:`.kv`): this module never asks which kind of cache a layer has.
"""
from __future__ import annotations

import dataclasses
import logging
import operator
from typing import Callable

import torch
import torch.fx as fx

from .. import kernels  # noqa: F401  (registers torch.ops.vtp)
from ..kernels import select
from ..kernels.frames import rerank
from ..graph.fx_utils import Unsupported, insert_after, is_one, is_sdpa, sdpa_args, tensor_val, val
from ..graph import tp
from ..graph.positions import mrope_positions
from ..graph.seq_dims import SeqDims
from ..graph.vlm_graph import LayerView, VLMGraph
from ..sites import LayerSite, ReserveSite, RouteSite, method_of, needs_frames
from . import traced, vision_args
from .kv import Layouts
from ..errors import OptionError

log = logging.getLogger("vtp_compile")
ops = torch.ops.vtp


# ---- state carried from one site to the next ------------------------------------------------
@dataclasses.dataclass
class CompactState:
    """Where earlier sites left the sequence: which positions are visual and live, and each
    row's last live position."""
    visual_mask: fx.Node
    live: fx.Node
    qpos: fx.Node
    layouts: Layouts = None       # each layer's KV layout (passes/kv)
    first_visual: fx.Node = None  # the visual mask of the original sequence (for explain)
    origin: fx.Node | None = None  # [B, W] original position of each slot (None: unpruned)
    keep_nodes: list = dataclasses.field(default_factory=list)  # (site, idx, slot_live, n_keep)
    cache_outputs: dict = dataclasses.field(default_factory=dict)  # cache `cat` -> current output
    fixed: set = dataclasses.field(default_factory=set)  # layers whose cache holds its final set
    # in-place cache writes -> (origin, slot_live) of the last compaction covering them, placed
    # once every site is applied (KVLayout.finish)
    static_writes: dict = dataclasses.field(default_factory=dict)
    # frame ids of the original sequence, per ``frame_tokens`` (kernels/frames.py), made once
    frames: dict = dataclasses.field(default_factory=dict)
    # a one-row batch of static length whose visual count the graph's shapes give: the current
    # layout's length, its visual count and the original sequence's (None: data), which fix
    # each site's width (_static_width)
    length: int | None = None
    n_visual: int | None = None
    n_visual_orig: int | None = None


@dataclasses.dataclass
class SiteNodes:
    """What :func:`apply_site` inserted, for passes that build on a compaction (DSTP)."""
    scores: fx.Node          # [B, L] scores the selection used
    visual_mask: fx.Node     # [B, L] visual mask before the site
    live: fx.Node            # [B, L] live positions before the site
    idx: fx.Node             # [B, W] kept positions, then dead slots
    slot_live: fx.Node       # [B, W] which slots hold a kept token
    n_keep: fx.Node          # [B] the site's keep count (without a reserve)
    entry: fx.Node           # hidden state entering the site's layer (full length)
    exits: list              # scatter_seq nodes that reintegrate outputs to full length
    anchor: fx.Node          # insert new shared nodes after this one


def init_state(vlm: VLMGraph, layouts: Layouts) -> CompactState:
    g = vlm.gm.graph
    first_attention = vlm.attention_layers[0]
    mask = sdpa_args(first_attention.sdpa)["attn_mask"]
    mask = mask if isinstance(mask, fx.Node) else None
    order = {n: i for i, n in enumerate(g.nodes)}
    source = vlm.splice if vlm.splice is not None else vlm.embeds_input
    anchor = source if mask is None or order[mask] < order[source] else mask
    with insert_after(g, anchor):
        if vlm.splice is not None:
            vis = visual_union(g, vlm)
        else:   # spliced in an earlier graph (see kernels/splice.py)
            vis = g.call_function(ops.splice_lookup.default, (vlm.embeds_input,))
        if mask is not None:
            mask = layouts[first_attention.index].prompt_mask(g, mask, vis)
        live = g.call_function(traced.live_from_mask, (mask, vis))
        qpos = g.call_function(traced.last_live, (live,))
    n = spliced_count(vlm)
    length = None if n is None else tensor_val(vlm.splice).shape[1]
    return CompactState(vis, live, qpos, layouts, first_visual=vis, length=length, n_visual=n,
                        n_visual_orig=n)


def spliced_count(vlm: VLMGraph) -> int | None:
    """The visual positions of a one-row batch, from its spliced features' static shapes (each
    splice writes one position per ``D`` feature values, and the model checks that the
    placeholders match the features); None where a shape is symbolic, the batch has several
    rows (their counts are data), or an earlier graph spliced some of the positions."""
    if vlm.splice is None or vlm.spliced_before is not None:
        return None
    shape = tensor_val(vlm.splice).shape
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape) or shape[0] != 1:
        return None
    total = 0
    for splice in (*vlm.earlier_splices, vlm.splice):
        numel = tensor_val(splice.args[2]).numel()
        if not isinstance(numel, int) or numel % shape[2]:
            return None
        total += numel // shape[2]
    return total


def visual_union(g: fx.Graph, vlm: VLMGraph) -> fx.Node:
    """``[B, L]`` bool: the positions any splice of the chain fills (images, then videos), and those
    an earlier graph spliced into its input embeddings (``splice_lookup``: all False unless they
    are exactly the embeddings ``record_splice`` kept), inserted at the current insertion point
    (after the last splice)."""
    out = None
    if vlm.spliced_before is not None:   # spliced in an earlier graph too (images), see VLMGraph
        out = g.call_function(ops.splice_lookup.default, (vlm.spliced_before,))
    for m in vlm.visual_masks:
        vis = g.call_function(traced.visual_mask_2d, (m,))
        out = vis if out is None else g.call_function(operator.or_, (out, vis))
    return out


def record_splice(vlm: VLMGraph) -> None:
    """A graph with the splice but no decoder layers: record the spliced embeddings and the
    visual mask for the decoder graph that will read them (kernels/splice.py)."""
    g = vlm.gm.graph
    with insert_after(g, vlm.splice):
        vis = visual_union(g, vlm)
        rec = g.call_function(ops.record_splice.default, (vlm.splice, vis))
    vlm.splice.replace_all_uses_with(rec, delete_user_cb=lambda u: u is not rec)
    g.lint()


@dataclasses.dataclass
class Selection:
    """The nodes one site's selection inserted (before its layer)."""
    score: fx.Node
    idx: fx.Node             # [B, W] kept positions, then dead slots
    slot_live: fx.Node       # [B, W]
    n_keep: fx.Node
    src: fx.Node             # the hidden state to gather at the site's layer (merged if any)
    vis_c: fx.Node           # visual mask, compacted
    qpos_c: fx.Node          # last live slot per row
    origin: fx.Node          # original position of each slot
    width: int | None        # the layout's static width (None: data; see _static_width)
    n_visual: int | None     # visual positions the site keeps, where static


def apply_site(vlm: VLMGraph, site, state: CompactState, end: int | None = None,
               scores: Callable | None = None) -> SiteNodes:
    """Compact layers ``[K, end)`` (default: to the last layer) to the kept tokens.

    ``scores``, if given, builds the ``[B, L]`` score node instead of the site's own scoring:
    ``scores(graph, entry, state, n_keep) -> fx.Node`` (RouteSite selectors, built by their pass).

    Layers without attention (linear attention, convolutions: hybrid models) mix tokens through
    the sequence and cannot run on a subset; when the region holds one, every attention layer of
    it is compacted on its own with the same selection (removed tokens skip the attention layers
    and still flow through the others), see the README.
    """
    if isinstance(site, LayerSite):
        K = site.layer
        lo = 0 if site.own_attention else 1
        if not lo <= K < vlm.num_layers:
            raise OptionError(f"vtp: layer {K} is out of range; this model has {vlm.num_layers} "
                             f"decoder layers, so the layer must be in [{lo}, {vlm.num_layers - 1}]")
    else:
        K = getattr(site, "layer", 0)
    end = vlm.num_layers if end is None else end
    entry = vlm.layers[K].entry
    layers = vlm.layers[K:end]
    if getattr(site, "merge", None) is not None and layers and layers[0].sdpa is None:
        # the merged hidden state would feed layer K's compaction, and layer K mixes tokens
        # without attention (hybrid models): it is not compacted, so the merge would be lost
        raise Unsupported(f"{method_of(site)} merges removed tokens into kept ones at layer {K}, "
                          "which mixes tokens without attention (a linear-attention or convolution "
                          "layer) and so is not compacted: the merge would not reach it; choose a "
                          "layer that is an attention layer")
    sel = _select(vlm, site, state, K, scores)
    if all(lv.sdpa is not None for lv in layers):
        spans = [(K, end)]
    else:
        if isinstance(site, (ReserveSite, RouteSite)):
            raise Unsupported(f"{method_of(site)} needs every layer from {K} on to be an attention "
                              "layer (this model mixes tokens without attention there)")
        spans = [(lv.index, lv.index + 1) for lv in layers if lv.sdpa is not None]
    exits = []
    for start, stop in spans:
        exits += _compact(vlm, sel, start, stop, state, K)
    # a routed (single-layer) compaction fixes what its layers cache; a full-stack site leaves
    # them to later sites, which evict earlier layers further (Nüwa: encoder, then layer K)
    final = end < vlm.num_layers or isinstance(site, RouteSite) or len(spans) > 1
    state.layouts.evict_before(K, sel.idx, sel.slot_live, sel.origin, state, final, vlm.gm.graph)
    if final:
        state.fixed.update(range(K, end))
    state.keep_nodes.append((site, sel.idx, sel.slot_live, sel.n_keep))
    result = SiteNodes(sel.score, state.visual_mask, state.live, sel.idx, sel.slot_live, sel.n_keep,
                       entry, exits, sel.origin)
    if end == vlm.num_layers and len(spans) == 1:   # the rest of the stack runs on the kept tokens
        state.visual_mask, state.live, state.qpos = sel.vis_c, sel.slot_live, sel.qpos_c
        state.origin, state.length, state.n_visual = sel.origin, sel.width, sel.n_visual
    elif end == vlm.num_layers:                      # per-layer: full length, removed not live
        g = vlm.gm.graph
        with g.inserting_before(sel.origin.next):
            kept = g.call_function(traced.kept_positions, (sel.idx, sel.slot_live, state.visual_mask))
            state.visual_mask = g.call_function(operator.and_, (state.visual_mask, kept))
            state.live = g.call_function(operator.and_, (state.live, kept))
        state.n_visual = sel.n_visual
    vlm.gm.graph.lint()
    return result


def _select(vlm: VLMGraph, site, state: CompactState, K: int, scores) -> Selection:
    """Score and select before layer K: each row's kept positions in the compacted layout."""
    g = vlm.gm.graph
    entry = vlm.layers[K].entry
    first = next(n for n in g.nodes if n in set(vlm.layers[K].nodes))
    keep = site.keep
    budget = keep.budget or 0
    num, den = (0, 1) if keep.ratio is None else (keep.ratio.numerator, keep.ratio.denominator)
    vis, live, qpos = state.visual_mask, state.live, state.qpos
    ctx = (vision_args.context_args(vlm, site, state.first_visual)
           if getattr(site, "context", False) else None)
    with g.inserting_before(first):
        frames = None
        if needs_frames(site):
            frames = frame_ids(vlm, state, keep.frames.frame_tokens if keep.frames else 0)
        n_vis = g.call_function(traced.count_visual, (vis,))
        if keep.schedule is not None:
            n_orig = g.call_function(traced.count_visual, (state.first_visual,))
            n_keep = g.call_function(keep.schedule, (n_vis, n_orig))
        else:
            n_keep = g.call_function(traced.keep_count, (n_vis, budget, num, den))
        if scores is not None:
            score = scores(g, entry, state, n_keep)
        elif isinstance(site, LayerSite):
            if site.own_attention and vlm.layers[K].sdpa is None:
                raise OptionError(f"vtp: {method_of(site)} scores with layer {K}'s own attention and "
                                  f"layer {K} of this model has none (a linear-attention or "
                                  "convolution layer); choose stage layers that are attention layers")
            prev = vlm.layers[K] if site.own_attention else scoring_layer(vlm, K, site)
            score = _layer_score(g, vlm, prev, site, entry, state, n_keep, first)
        else:
            inputs = {"hidden": entry, "visual_mask": vis, "live": live, "qpos": qpos, "n_keep": n_keep}
            if ctx is not None:
                inputs["ctx"] = ctx
            if frames is not None:
                inputs["frames"] = frames
            score = g.call_function(site.score, (inputs,))
        if vlm.tp is not None:   # every rank selects the same tokens (see graph.tp)
            score = g.call_function(tp.agree, (score, vlm.tp.size, vlm.tp.group_name))
        if frames is not None and keep.frames.alloc != "off":
            score = frame_scores(g, score, frames, vis, live, entry, keep.frames)
        n_sel = n_keep
        if isinstance(site, ReserveSite):
            n_sel = g.call_function(traced.with_reserve, (n_keep, site.reserve))
        width, n_visual = _static_width(site, state)
        sel = g.call_function(ops.select_keep.default, (score, vis, live, n_sel, width))
        idx = g.call_function(operator.getitem, (sel, 0))
        slot_live = g.call_function(operator.getitem, (sel, 1))
        src = entry
        if getattr(site, "merge", None) is not None:
            if isinstance(site, ReserveSite):   # the base's merge: into the active set only
                live_vis = g.call_function(operator.and_, (vis, live))
                n_act = g.call_function(torch.minimum, (n_keep, g.call_function(traced.count_visual, (live_vis,))))
                kept = g.call_function(ops.topk_mask.default, (score, live_vis, n_act))
            else:
                kept = g.call_function(traced.kept_positions, (idx, slot_live, vis))
            inputs = {"hidden": entry, "visual_mask": vis, "keep_mask": kept, "scores": score,
                      "live": live}
            if ctx is not None:
                inputs["ctx"] = ctx
            if frames is not None:
                inputs["frames"] = frames
            src = g.call_function(site.merge, (inputs,))
        vis_c = g.call_function(traced.compact_visual, (vis, idx, slot_live))
        qpos_c = g.call_function(traced.last_live, (slot_live,))
        origin = g.call_function(traced.compose_origin, (state.origin, idx))
    return Selection(score, idx, slot_live, n_keep, src, vis_c, qpos_c, origin, width or None, n_visual)


def _static_width(site, state: CompactState) -> tuple[int, int | None]:
    """``(width, visual count after the site)``: the site's compacted width where the batch's
    shapes fix it (:func:`vtp_compile.kernels.select.static_width`), else ``(0, None)`` (the
    width is data). The keep count is the site's own rule on the static count."""
    V, L = state.n_visual, state.length
    if V is None or L is None:
        return 0, None
    n_sel = min(int(site.keep.count(V, state.n_visual_orig)), V)
    if isinstance(site, ReserveSite):
        n_sel = int(traced.with_reserve(torch.tensor([n_sel]), site.reserve)[0])
    return select.static_width(L, V, n_sel), min(max(n_sel, 0), V)


def frame_ids(vlm: VLMGraph, state: CompactState, frame_tokens: int) -> fx.Node:
    """``[B, W]`` int64: each slot's frame (kernels/frames.py), -1 where not visual, inserted at
    the current point; the original sequence's ids are made once and gathered to the layout."""
    g = vlm.gm.graph
    if frame_tokens not in state.frames:
        found = mrope_positions(vlm)
        temporal = None
        if found is not None:
            pos, channel = found
            temporal = g.call_function(operator.getitem, (pos, channel))
        state.frames[frame_tokens] = g.call_function(
            ops.frame_ids.default, (state.first_visual, temporal, frame_tokens))
    out = state.frames[frame_tokens]
    if state.origin is not None:
        out = g.call_function(traced.gather_slots, (out, state.origin))
    return out


def frame_scores(g: fx.Graph, score: fx.Node, frames: fx.Node, vis: fx.Node, live: fx.Node,
                 hidden: fx.Node, rule) -> fx.Node:
    """The site's scores re-ranked so that its kept count is spread over the frames (``rule``:
    a :class:`~vtp_compile.config.FrameRule`; :func:`vtp_compile.kernels.frames.rerank`)."""
    cand = g.call_function(operator.and_, (vis, live))
    return rerank(lambda op, *args: g.call_function(op.default, args), score, frames, cand, hidden, rule)


def scoring_layer(vlm: VLMGraph, K: int, site) -> LayerView:
    """The last attention layer before K (layer K-1 unless that one has no attention)."""
    for lv in reversed(vlm.layers[:K]):
        if lv.sdpa is not None:
            return lv
    raise OptionError(f"vtp: {method_of(site)} scores with the attention of a layer before layer "
                      f"{K}, and this model has none there; choose a later layer")


def _compact(vlm: VLMGraph, sel: Selection, start: int, stop: int, state: CompactState,
             K: int) -> list:
    """Run layers ``[start, stop)`` on the selection's kept tokens; returns the exit nodes."""
    g = vlm.gm.graph
    entry = vlm.layers[start].entry
    region_set = set()
    for lv in vlm.layers[start:stop]:
        region_set.update(lv.nodes)
    region = [n for n in g.nodes if n in region_set]
    sd = SeqDims(region, entry)
    idx, slot_live = sel.idx, sel.slot_live
    with g.inserting_before(region[0]):
        h = g.call_function(ops.gather_seq.default, (sel.src if start == K else entry, idx, 1, 0))
        new_len = g.call_function(traced.seq_len, (idx,))
        full_len = g.call_function(traced.seq_length, (state.first_visual,))

    externals = _externals(region, region_set)
    for ext in externals:
        dims = sd.seq_dims(ext)
        if ext is entry:
            _replace_in(ext, h, region_set)
            continue
        if not dims:
            continue
        if tp.is_dtensor(tensor_val(ext)):
            raise Unsupported(f"DTensor {ext.name} with a sequence dim enters the pruned region")
        bdim = _batch_dim(sd, ext, dims)
        users = [u for u in region if ext in u.all_input_nodes]
        with g.inserting_before(users[0]):
            cur = ext
            for d in dims:
                cur = g.call_function(ops.gather_seq.default, (cur, idx, d, bdim))
        _replace_in(ext, cur, region_set)

    for n in sd.shape_edits:
        _edit_shape_args(n, [d for d in range(tensor_val(n).dim()) if sd.is_seq(n, d)], new_len)
    for n in sd.dtensor_edits:
        tp.edit_from_local(g, n, sd.seq_dims(n), new_len)
    made = {}    # no live query attends to a dead slot (each layout restricts its calls)
    for n in region:
        if is_sdpa(n):
            state.layouts.of(n).restrict(g, n, slot_live, sel.origin, full_len, made)

    exits = []
    out_node = next(n for n in reversed(g.nodes) if n.op == "output")
    for n in region:
        outside = [u for u in n.users if u not in region_set]
        if not outside:
            continue
        dims = sd.seq_dims(n)
        if not dims:
            continue
        if dims != [1] and state.layouts.of(n).leave_cache(g, n, slot_live, state, out_node):
            continue    # a KV cache, stored as its layout stores it
        if dims != [1] or tensor_val(n).dim() != tensor_val(entry).dim():
            raise Unsupported(f"{n.name} leaves the pruned region with sequence dims {dims}")
        with insert_after(g, n):
            full = g.call_function(ops.scatter_seq.default, (entry, n, idx, slot_live))
        full.meta["example_value"] = val(n)   # full length again: the shape the users saw
        _replace_in(n, full, set(outside))
        exits.append(full)

    for n in sd.static_writes:      # caches written in place
        state.layouts.of(n).leave_write(n, sel.origin, slot_live, state)
    for n, x, d in sd.seq_slices:   # slices along the sequence (a window a cache stores)
        state.layouts.of(n).leave_slice(g, n, x, d, sel.origin, slot_live, state)
    return exits


def _layer_score(g: fx.Graph, vlm: VLMGraph, prev, site, entry, state: CompactState,
                 n_keep, first: fx.Node) -> fx.Node:
    """Score node of a LayerSite, from layer ``prev``'s attention inputs (``K - 1``'s, every
    head's, also when tensor parallelism splits them across ranks; or layer K's own, recomputed
    on the full sequence, with ``own_attention``)."""
    orig = sdpa_args(prev.sdpa)
    layout = state.layouts[prev.index]
    att = _own_attention_inputs(g, prev, first, layout.stand_ins()) if site.own_attention else orig
    q, k, m = att["query"], att["key"], att["attn_mask"]
    m = m if isinstance(m, fx.Node) else None
    k, m = layout.score_keys(g, k, m, state, site.own_attention)
    q_row = g.call_function(traced.query_row, (q, state.qpos))
    q_row, k = tp.full_heads(g, vlm.tp, prev.nodes, orig["query"], q_row, k)
    q_row, scale = scaled_query(g, q_row, att)
    key_row = g.call_function(traced.query_key_row, (m, state.qpos, state.live, bool(att["is_causal"])))
    inputs = {"q": q_row, "k": k, "key_mask": key_row, "scale": scale, "hidden": entry,
              "visual_mask": state.visual_mask, "live": state.live, "qpos": state.qpos,
              "n_keep": n_keep}
    if "q_all" in site.inputs:      # every query, every head (all ranks' heads under TP)
        (q_all,) = tp.full_heads(g, vlm.tp, prev.nodes, orig["query"], q)
        inputs["q_all"] = scaled_query(g, q_all, att)[0]
    if "mask_all" in site.inputs:
        inputs["mask_all"] = g.call_function(traced.query_key_rows, (m, state.live, bool(att["is_causal"])))
    if "embeds" in site.inputs:
        inputs["embeds"] = _current_layout(g, vlm.layers[0].entry, state)
    if "n_orig" in site.inputs:
        inputs["n_orig"] = g.call_function(traced.count_visual, (state.first_visual,))
    return g.call_function(site.score, (inputs,))


def _current_layout(g: fx.Graph, x: fx.Node, state: CompactState) -> fx.Node:
    """``x`` ``[B, L, ...]`` (original layout) gathered into the layout earlier sites left."""
    pos = None
    for site, idx, _, _ in state.keep_nodes:
        if isinstance(site, RouteSite):
            continue
        pos = idx if pos is None else g.call_function(torch.gather, (pos, 1, idx))
    return x if pos is None else g.call_function(ops.gather_seq.default, (x, pos, 1, 0))


def _own_attention_inputs(g: fx.Graph, lv, first: fx.Node, stand_ins: dict) -> dict:
    """Layer ``lv``'s SDPA arguments with its query and key recomputed, before ``first``, from
    the full sequence entering the layer: a copy of the layer's nodes they depend on.

    A buffer written in place (``stand_ins``: buffer -> the states written into it) is read, not
    computed: its recomputed stand-in is the layer's new states in the first slots (the write
    itself is in place, so no data edge leads to it)."""
    att = sdpa_args(lv.sdpa)
    inside = set(lv.nodes)
    need, stack = set(), [a for a in (att["query"], att["key"], att["scale"]) if isinstance(a, fx.Node)]
    while stack:
        n = stack.pop()
        if n in stand_ins:
            stack.append(stand_ins[n])
        elif n in inside and n not in need:
            need.add(n)
            stack.extend(n.all_input_nodes)
    order = {n: i for i, n in enumerate(g.nodes)}
    env = {}
    for n in lv.nodes:
        if n in stand_ins and stand_ins[n] in env:
            # a buffer made in a dynamic-shape graph has a symbolic size, which the copied nodes
            # read back from the tensor itself: the states alone then do
            slots = n if n.op == "placeholder" else tensor_val(n).shape[2]
            slots = slots if isinstance(slots, (int, fx.Node)) else None
            env[n] = g.call_function(traced.pad_slots, (env[stand_ins[n]], slots))
            continue
        if n not in need:
            continue
        if n.op not in ("call_function", "call_method"):
            raise Unsupported(f"cannot recompute layer {lv.index}'s attention inputs: {n.format_node()}")
        for a in n.all_input_nodes:
            if a not in env and order[a] >= order[first]:
                raise Unsupported(f"layer {lv.index}'s attention inputs read {a.name}, defined inside "
                                  "the pruned region")
        env[n] = g.node_copy(n, lambda a: env.get(a, a))
    return {**att, **{k: env.get(att[k], att[k]) for k in ("query", "key", "scale")}}


def scaled_query(g: fx.Graph, q: fx.Node, att: dict):
    """``(q, scale)`` for a score op: SDPA's scale as a number, or, when the graph computes it
    (a SymFloat once Dynamo has seen several values), folded into ``q`` with scale 1."""
    scale = att["scale"]
    if isinstance(scale, fx.Node):
        return g.call_function(operator.mul, (q, scale)), 1.0
    if scale is None:
        scale = tensor_val(att["query"]).shape[-1] ** -0.5
    return q, float(scale)


def _externals(region, region_set):
    seen, out = set(), []
    for n in region:
        for a in n.all_input_nodes:
            if a not in region_set and a not in seen:
                seen.add(a)
                out.append(a)
    return out


def _batch_dim(sd: SeqDims, ext: fx.Node, seq_dims: list[int]) -> int:
    b = sd.batch_dim(ext)
    if b is not None:
        return b
    shape = tensor_val(ext).shape
    for d in range(min(seq_dims)):
        if is_one(shape[d]):
            return d  # broadcast over the batch
    raise Unsupported(f"cannot tell the batch dimension of {ext.name} {tuple(shape)}")


def _replace_in(old: fx.Node, new: fx.Node, users: set) -> None:
    for u in list(old.users):
        if u in users and u is not new:
            u.replace_input_with(old, new)


def _edit_shape_args(n: fx.Node, seq_dims: list[int], new_len: fx.Node) -> None:
    if not seq_dims:
        return
    args = list(n.args)
    if "size" in n.kwargs or "shape" in n.kwargs:
        raise Unsupported(f"shape given as keyword in {n.name}")
    if len(args) == 2 and isinstance(args[1], (tuple, list)):
        shape, packed = list(args[1]), True
    else:
        shape, packed = args[1:], False
    if len(shape) != tensor_val(n).dim():
        raise Unsupported(f"cannot read the shape arguments of {n.name}")
    for d in seq_dims:
        if not (isinstance(shape[d], int) and shape[d] == -1):
            shape[d] = new_len
    n.args = (args[0], tuple(shape)) if packed else (args[0], *shape)
