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

from ..graph.fx_utils import is_sdpa, op_name, sdpa_args, tensor_val
from ..kernels.cache import COMPACTED

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


def mark_compacted(g: fx.Graph, cache: fx.Node, slot_live: fx.Node, role: str | None) -> fx.Node:
    """Insert ``mark_dead`` for a compacted cache tensor (after ``cache``); returns the node."""
    if role is None:
        from ..graph.fx_utils import Unsupported
        raise Unsupported(f"cannot tell whether cache tensor {cache.name} holds keys or values")
    dead = g.call_function(operator.invert, (slot_live,))
    return g.call_function(ops.mark_dead.default, (cache, dead, role == "value", COMPACTED))


def evict_early_cache(vlm, K: int, idx: fx.Node, slot_live: fx.Node, state, final: bool) -> None:
    """Layers before the site cache only the kept tokens too, in the compacted layout."""
    g = vlm.gm.graph
    out = next(n for n in reversed(g.nodes) if n.op == "output")
    for lv in vlm.layers[:K]:
        if lv.index in state.fixed:
            continue   # an earlier site already decided what this layer caches
        if final:
            state.fixed.add(lv.index)
        for n in lv.nodes:
            if not is_cache_update(n):
                continue
            cur = state.cache_outputs.get(n, n)
            if out not in cur.users:
                continue
            with g.inserting_before(out):
                new = g.call_function(ops.gather_seq.default, (cur, idx, 2, 0))
                new = mark_compacted(g, new, slot_live, cache_role(n))
            out.replace_input_with(cur, new)
            state.cache_outputs[n] = new
