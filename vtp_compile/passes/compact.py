"""Sequence compaction: the mechanism behind ``LayerSite`` and ``EncoderSite``.

At the entry of decoder layer K: score, select the kept positions (all non-visual tokens plus
the top-k visual ones, in position order), gather the hidden state and every per-sequence
tensor the later layers read (rotary cos/sin, masks, position ids), rewrite the sequence sizes
in later shape arguments, and at the exit scatter the survivors back into the full-length
hidden state so that the graph's outputs keep their shapes (pruned positions keep the hidden
state they had when they left).
"""
from __future__ import annotations

import dataclasses
import logging
import operator
from typing import Callable

import torch
import torch.fx as fx

from .. import kernels  # noqa: F401  (registers torch.ops.vtp)
from ..graph.fx_utils import Unsupported, insert_after, is_one, op_name, sdpa_args, tensor_val, val
from ..graph.seq_dims import SeqDims
from ..graph.vlm_graph import VLMGraph
from ..sites import LayerSite, ReserveSite, RouteSite

log = logging.getLogger("vtp_compile")
ops = torch.ops.vtp


# ---- helpers traced into the graph -----------------------------------------------------------
def visual_mask_2d(splice_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool from the splice's ``[B, L, 1]`` (or ``[B, L, D]``) mask."""
    m = splice_mask
    while m.dim() > 2:
        m = m[..., 0]
    return m.bool()


def visual_per_row(features: torch.Tensor, hidden: torch.Tensor):
    """Visual tokens per sample: all spliced feature rows divided by the batch size."""
    return features.numel() // features.shape[-1] // hidden.shape[0]


def features_per_row(features: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    return features.reshape(hidden.shape[0], -1, features.shape[-1])


def last_query_mask_row(mask: torch.Tensor) -> torch.Tensor:
    """The attention-mask row of the last query: ``[B or 1, S]``."""
    row = mask[..., -1, :]
    while row.dim() > 2:
        row = row[:, 0]
    return row


def visual_scores_to_seq(visual_mask: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Place per-visual-token scores ``[B, V]`` at their sequence positions in ``[B, L]``."""
    out = torch.zeros(visual_mask.shape, dtype=torch.float32, device=scores.device)
    return out.masked_scatter(visual_mask, scores.float())


def positions_mask(idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``: True at the positions listed in ``idx`` ``[B, L']``."""
    return torch.zeros_like(like, dtype=torch.bool).scatter(1, idx, True)


def seq_len(idx: torch.Tensor):
    return idx.shape[1]


def keep_count(n_visual, budget: int, num: int, den: int):
    if budget > 0:
        return budget
    return (n_visual * num + den - 1) // den


def with_reserve(n_keep, reserve: int | None):
    """Tokens a :class:`ReserveSite` carries: the active ones plus the reserve."""
    return n_keep + (n_keep if reserve is None else reserve)


# ---- state carried from one site to the next ------------------------------------------------
@dataclasses.dataclass
class CompactState:
    """Where earlier sites left the sequence: the current visual mask and count."""
    visual_mask: fx.Node
    n_visual: fx.Node
    keep_nodes: list = dataclasses.field(default_factory=list)  # (site, idx node, n_keep node)
    cache_outputs: dict = dataclasses.field(default_factory=dict)  # cache `cat` -> current output
    fixed: set = dataclasses.field(default_factory=set)  # layers whose cache holds its final set


@dataclasses.dataclass
class SiteNodes:
    """What :func:`apply_site` inserted, for passes that build on a compaction (DSTP)."""
    scores: fx.Node          # [B, L] scores the selection used
    visual_mask: fx.Node     # [B, L] visual mask before the site
    n_visual: fx.Node        # visual tokens per row before the site
    idx: fx.Node             # [B, L'] kept positions
    n_keep: fx.Node          # the site's keep count (without a reserve)
    entry: fx.Node           # hidden state entering the site's layer (full length)
    exits: list              # scatter_seq nodes that reintegrate outputs to full length
    anchor: fx.Node          # insert new shared nodes after this one


def init_state(vlm: VLMGraph) -> CompactState:
    g = vlm.gm.graph
    with insert_after(g, vlm.splice):
        vis = g.call_function(visual_mask_2d, (vlm.visual_mask,))
        nv = g.call_function(visual_per_row, (vlm.features, vlm.splice))
    return CompactState(vis, nv)


def apply_site(vlm: VLMGraph, site, state: CompactState, end: int | None = None,
               scores: Callable | None = None) -> SiteNodes:
    """Compact layers ``[K, end)`` (default: to the last layer) to the kept tokens.

    ``scores``, if given, builds the ``[B, L]`` score node instead of the site's own scoring:
    ``scores(graph, entry, visual_mask, n_visual, n_keep) -> fx.Node`` (RouteSite selectors,
    built by their pass).
    """
    g = vlm.gm.graph
    if isinstance(site, LayerSite):
        K = site.layer
        if not 1 <= K < vlm.num_layers:
            raise ValueError(f"vtp: layer {K} is out of range; this model has {vlm.num_layers} "
                             f"decoder layers, so the layer must be in [1, {vlm.num_layers - 1}]")
    else:
        K = getattr(site, "layer", 0)
    end = vlm.num_layers if end is None else end
    entry = vlm.layers[K].entry
    region_set = set()
    for lv in vlm.layers[K:end]:
        region_set.update(lv.nodes)
    region = [n for n in g.nodes if n in region_set]
    sd = SeqDims(region, entry)
    first = region[0]
    keep = site.keep
    budget = keep.budget or 0
    num, den = (0, 1) if keep.budget else (keep.ratio.numerator, keep.ratio.denominator)

    with g.inserting_before(first):
        n_keep = g.call_function(keep_count, (state.n_visual, budget, num, den))
        if scores is not None:
            scores = scores(g, entry, state.visual_mask, state.n_visual, n_keep)
        elif isinstance(site, LayerSite):
            att = sdpa_args(vlm.layers[K - 1].sdpa)
            q, k, m = att["query"], att["key"], att["attn_mask"]
            scale = att["scale"] or tensor_val(q).shape[-1] ** -0.5
            row = g.call_function(last_query_mask_row, (m,)) if isinstance(m, fx.Node) else None
            scores = g.call_function(site.score, (q, k, row, float(scale), entry, state.visual_mask,
                                                  state.n_visual, n_keep))
        else:
            feats = g.call_function(features_per_row, (vlm.features, entry))
            ctx = (vision_context_args(vlm, site),) if getattr(site, "context", False) else ()
            vscores = g.call_function(site.score, (feats, n_keep, entry, state.visual_mask, *ctx))
            scores = g.call_function(visual_scores_to_seq, (state.visual_mask, vscores))
        n_sel = n_keep
        if isinstance(site, ReserveSite):
            n_sel = g.call_function(with_reserve, (n_keep, site.reserve))
        idx = g.call_function(ops.select_keep.default, (scores, state.visual_mask, state.n_visual, n_sel))
        new_len = g.call_function(seq_len, (idx,))
        src = entry
        if getattr(site, "merge", None) is not None:
            kept = g.call_function(positions_mask, (idx, state.visual_mask))
            extra = (scores, *ctx) if getattr(site, "context", False) else ()
            src = g.call_function(site.merge, (entry, state.visual_mask, kept, *extra))
        h = g.call_function(ops.gather_seq.default, (src, idx, 1, 0))
        vis = g.call_function(ops.gather_seq.default, (state.visual_mask, idx, 1, 0))
        n_vis = g.call_function(torch.sym_min, (n_sel, state.n_visual))

    externals = _externals(region, region_set)
    for ext in externals:
        dims = sd.seq_dims(ext)
        if ext is entry:
            _replace_in(ext, h, region_set)
            continue
        if not dims:
            continue
        bdim = _batch_dim(sd, ext, dims)
        users = [u for u in region if ext in u.all_input_nodes]
        with g.inserting_before(users[0]):
            cur = ext
            for d in dims:
                cur = g.call_function(ops.gather_seq.default, (cur, idx, d, bdim))
        _replace_in(ext, cur, region_set)

    for n in sd.shape_edits:
        _edit_shape_args(n, [d for d in range(tensor_val(n).dim()) if sd.is_seq(n, d)], new_len)

    exits = []
    for n in region:
        outside = [u for u in n.users if u not in region_set]
        if not outside:
            continue
        dims = sd.seq_dims(n)
        if not dims:
            continue
        if all(u.op == "output" for u in outside) and dims != [1]:
            continue  # a compacted KV-cache tensor: the smaller cache is the point
        if dims != [1] or tensor_val(n).dim() != tensor_val(entry).dim():
            raise Unsupported(f"{n.name} leaves the pruned region with sequence dims {dims}")
        with insert_after(g, n):
            full = g.call_function(ops.scatter_seq.default, (entry, n, idx))
        full.meta["example_value"] = val(n)   # full length again: the shape the users saw
        _replace_in(n, full, set(outside))
        exits.append(full)

    # a routed (single-layer) compaction fixes what its layers cache; a full-stack site leaves
    # them to later sites, which evict earlier layers further (Nüwa: encoder, then layer K)
    final = end < vlm.num_layers or isinstance(site, RouteSite)
    _evict_early_cache(vlm, K, idx, state, final)
    if final:
        state.fixed.update(range(K, end))
    state.keep_nodes.append((site, idx, n_keep))
    result = SiteNodes(scores, state.visual_mask, state.n_visual, idx, n_keep, entry, exits, n_vis)
    if end == vlm.num_layers:   # the rest of the stack runs on the kept tokens
        state.visual_mask, state.n_visual = vis, n_vis
    g.lint()
    return result


def vision_context_args(vlm: VLMGraph, site) -> tuple:
    """``(cls_attn, upper, grid_h, grid_w)`` for a ``context`` site: from the
    ``vision_context`` node (direct forward), or a ``vision_lookup`` of the record
    ``generate``'s eager encoding left (see :mod:`vtp_compile.vision_context`)."""
    from .. import vision_context
    tag = vlm.vision_context
    if tag is not None:
        return tuple(tag.args[1:5])
    rec = vision_context.last_record()
    if rec is None:
        raise ValueError(
            f"vtp: method {site.name!r} reads the vision tower's internals (CLS attention, upper "
            "layers), which are not in this graph; call vtp_compile.attach(model) once before "
            "model.compile(...) so that they reach it, and set "
            "torch._dynamo.config.capture_scalar_outputs = True (without it Dynamo splits the "
            "vision tower and the decoder into separate graphs) (README: Nüwa)")
    g = vlm.gm.graph
    gh, gw = rec.grid
    with insert_after(g, vlm.features):
        out = g.call_function(ops.vision_lookup.default, (vlm.features, gh, gw, int(rec.upper.shape[-1])))
    with insert_after(g, out):
        parts = [g.call_function(operator.getitem, (out, i)) for i in range(2)]
    return (*parts, gh, gw)


def strip_vision_context(vlm: VLMGraph) -> None:
    """Replace the ``vision_context`` carrier by its input and drop what only it used."""
    tag = vlm.vision_context
    if tag is None:
        return
    g = vlm.gm.graph
    tag.replace_all_uses_with(tag.args[0])
    work = [a for a in tag.all_input_nodes if a is not tag.args[0]]
    g.erase_node(tag)
    vlm.vision_context = None
    while work:
        n = work.pop()
        if n.users or n.op not in ("call_function", "call_method", "call_module"):
            continue
        work.extend(n.all_input_nodes)
        g.erase_node(n)


def _is_cache_update(n: fx.Node) -> bool:
    if op_name(n) != "cat":
        return False
    dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
    v = tensor_val(n)
    return v is not None and v.dim() == 4 and dim % 4 == 2


def _evict_early_cache(vlm: VLMGraph, K: int, idx: fx.Node, state: CompactState,
                       final: bool) -> None:
    """Layers before the site cache only the kept tokens too (see docs/design-notes.md).

    transformers builds one decode mask for all layers from layer 0's cache length; caches of
    different lengths per layer make the next decode step untraceable as soon as a padding mask
    exists. So once prefill is done, every layer's cache holds the kept tokens only.
    """
    g = vlm.gm.graph
    out = next(n for n in reversed(g.nodes) if n.op == "output")
    for lv in vlm.layers[:K]:
        if lv.index in state.fixed:
            continue   # an earlier site already decided what this layer caches
        if final:
            state.fixed.add(lv.index)
        for n in lv.nodes:
            if not _is_cache_update(n):
                continue
            cur = state.cache_outputs.get(n, n)
            if out not in cur.users:
                continue
            with g.inserting_before(out):
                new = g.call_function(ops.gather_seq.default, (cur, idx, 2, 0))
            out.replace_input_with(cur, new)
            state.cache_outputs[n] = new


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
