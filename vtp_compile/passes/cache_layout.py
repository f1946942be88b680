"""What each layer's KV cache holds after a pruned prefill (see :mod:`vtp_compile.kernels.cache`).

Compacted caches keep the kept tokens in the compacted layout; their dead slots are marked so
that decode graphs can rebuild the mask without state. Layers before a full-stack site are
evicted to the same layout: transformers builds one decode mask per attention type from the
first layer's cache length, so every layer of a type must hold a cache of the same length.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..graph.fx_utils import Unsupported, is_sdpa, op_name, sdpa_args, tensor_val
from ..kernels.cache import COMPACTED, POSITIONAL
from . import traced

ops = torch.ops.vtp
# ops that only move, expand or reshape a cache on its way to attention (GQA repeat_kv, dtype)
_PASS_THROUGH = {"expand", "reshape", "view", "contiguous", "to", "clone", "unsqueeze", "float",
                 "half", "bfloat16", "type_as", "repeat_interleave", "flatten", "getitem",
                 "transpose", "permute"}


def is_cache_update(n: fx.Node) -> bool:
    """A KV-cache ``cat([past, new], dim=-2)`` on a 4-D tensor."""
    if op_name(n) != "cat":
        return False
    dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
    v = tensor_val(n)
    return v is not None and v.dim() == 4 and dim % 4 == 2


def cache_role(n: fx.Node) -> str | None:
    """``"key"`` or ``"value"``: which attention argument the cache tensor ``n`` becomes."""
    frontier, seen = [n], set()
    while frontier:
        x = frontier.pop()
        if x in seen:
            continue
        seen.add(x)
        for u in x.users:
            if is_sdpa(u):
                a = sdpa_args(u)
                if a["key"] is x:
                    return "key"
                if a["value"] is x:
                    return "value"
            elif (op_name(u) in _PASS_THROUGH or u.target is operator.getitem) and u.all_input_nodes[0] is x:
                frontier.append(u)
    return None


def window_slice(cache: fx.Node) -> fx.Node | None:
    """The slice that keeps a sliding-window (or chunked) cache's last positions, when the
    cache update ``cache`` is stored that way: ``cat(...)[:, :, -(w-1):]`` -> graph output."""
    for u in cache.users:
        if (u.op == "call_function" and u.target is operator.getitem and u.args[0] is cache
                and all(x.op == "output" for x in u.users)):
            idx = u.args[1] if isinstance(u.args[1], tuple) else (u.args[1],)
            if len(idx) >= 3 and isinstance(idx[2], slice) and idx[2] != slice(None):
                return u
    return None


def positional_window(g: fx.Graph, sl: fx.Node, cache: fx.Node, dim: int, origin: fx.Node,
                      slot_live: fx.Node, state) -> None:
    """A sliding-window cache inside a compacted region keeps positions: the slice that stores
    its last window reads the cache restored to the unpruned layout (removed positions dead)."""
    if not (is_cache_update(cache) and dim == 2 and window_slice(cache) is sl):
        raise Unsupported(f"slice {sl.name} involves the sequence dimension")
    with g.inserting_before(sl):
        length = g.call_function(traced.seq_length, (state.first_visual,))
        full = g.call_function(ops.to_positional.default,
                               (cache, origin, slot_live, length, _role(cache) == "value"))
    sl.replace_input_with(cache, full)
    state.cache_outputs[cache] = full


def _role(cache: fx.Node) -> str:
    role = cache_role(cache)
    if role is None:
        raise Unsupported(f"cannot tell whether cache tensor {cache.name} holds keys or values")
    return role


def mark_compacted(g: fx.Graph, cache: fx.Node, slot_live: fx.Node, role: str | None) -> fx.Node:
    """Insert ``mark_dead`` for a compacted cache tensor (after ``cache``); returns the node."""
    if role is None:
        raise Unsupported(f"cannot tell whether cache tensor {cache.name} holds keys or values")
    dead = g.call_function(operator.invert, (slot_live,))
    return g.call_function(ops.mark_dead.default, (cache, dead, role == "value", COMPACTED))


def evict_early_cache(vlm, K: int, idx: fx.Node, slot_live: fx.Node, origin: fx.Node, state,
                      final: bool) -> None:
    """Layers before the site cache only the kept tokens too: compacted like the later layers,
    or, for a sliding-window cache, in positions with the removed ones dead."""
    from . import static_cache
    g = vlm.gm.graph
    out = next(n for n in reversed(g.nodes) if n.op == "output")
    removed = None
    for lv in vlm.layers[:K]:
        if lv.index in state.fixed:
            continue   # an earlier site already decided what this layer caches
        if final:
            state.fixed.add(lv.index)
        writes = static_cache.static_writes(lv.nodes)
        if writes:      # a static buffer: every position is there; mark the removed ones
            if removed is None:
                with g.inserting_before(out):
                    removed = g.call_function(traced.removed_positions,
                                              (origin, slot_live, state.first_visual))
            static_cache.mark_removed(g, writes, removed, out)
            continue
        for n in lv.nodes:
            if not is_cache_update(n):
                continue
            sl = window_slice(n)
            if sl is not None:
                out.prepend(sl)        # the stored window only feeds the output: move it there
                cur = sl.args[0]
                with g.inserting_before(sl):
                    if removed is None:
                        removed = g.call_function(traced.removed_positions,
                                                  (origin, slot_live, state.first_visual))
                    new = g.call_function(ops.mark_dead.default, (cur, removed, _role(n) == "value",
                                                                  POSITIONAL))
                sl.replace_input_with(cur, new)
                continue
            cur = state.cache_outputs.get(n, n)
            if out not in cur.users:
                continue
            with g.inserting_before(out):
                new = g.call_function(ops.gather_seq.default, (cur, idx, 2, 0))
                new = mark_compacted(g, new, slot_live, cache_role(n))
            out.replace_input_with(cur, new)
            state.cache_outputs[n] = new
