"""The compacted layout (full-attention layers of transformers' dynamic cache).

A layer's cache is ``cat([past, new], dim=-2)``. After a pruned prefill it holds each row's kept
tokens in order, then dead slots, marked ``COMPACTED`` (:mod:`vtp_compile.kernels.cache`): the
smaller cache is the point. A decode step's mask is rebuilt from the cache itself
(``vtp::decode_mask``): transformers' mask for rows whose cache was not compacted, every live
column for rows whose cache was.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ...graph.cache_nodes import PASS_THROUGH, cache_role, is_cache_update
from ...graph.fx_utils import Unsupported, op_name, sdpa_args, set_sdpa_mask, tensor_val
from ...kernels.cache import COMPACTED
from .base import Eviction, KVLayout

ops = torch.ops.vtp


def mark_compacted(g: fx.Graph, cache: fx.Node, slot_live: fx.Node, which: str | None) -> fx.Node:
    """``mark_dead`` for a compacted cache tensor (inserted at the graph's insert point)."""
    if which is None:
        raise Unsupported(f"cannot tell whether cache tensor {cache.name} holds keys or values")
    dead = g.call_function(operator.invert, (slot_live,))
    return g.call_function(ops.mark_dead.default, (cache, dead, which == "value", COMPACTED))


def decode_mask_for(mask, past_values, query, causal: bool):
    return ops.decode_mask(mask, past_values, query.shape[-2], causal)


def past_values(sdpa: fx.Node) -> fx.Node:
    """The value-cache graph input a decode step's attention call reads (through ``cat``)."""
    n = sdpa_args(sdpa)["value"]
    for _ in range(8):
        if is_cache_update(n):
            past = n.args[0][0] if n.args and isinstance(n.args[0], (list, tuple)) else None
            if isinstance(past, fx.Node) and past.op == "placeholder":
                return past
            break
        if not isinstance(n, fx.Node) or op_name(n) not in PASS_THROUGH or not n.all_input_nodes:
            break
        n = n.all_input_nodes[0]
    raise Unsupported(f"cannot find the value cache that {sdpa.name} reads")


class CompactedCache(KVLayout):
    kind = "compacted"

    def leave_cache(self, g, n, slot_live, state, out) -> bool:
        cur = state.cache_outputs.get(n, n)
        if not (is_cache_update(n) and out in cur.users):
            return False
        # an earlier site's marking of the same cache is replaced
        with g.inserting_before(out):
            marked = mark_compacted(g, n, slot_live, cache_role(n))
        out.replace_input_with(cur, marked)
        state.cache_outputs[n] = marked
        if cur is not n and not cur.users:
            g.erase_node(cur)
        return True

    def evict(self, g, ev: Eviction) -> None:
        for n in self.lv.nodes:
            if not is_cache_update(n):
                continue
            cur = ev.state.cache_outputs.get(n, n)
            if ev.out not in cur.users:
                continue
            with g.inserting_before(ev.out):
                new = g.call_function(ops.gather_seq.default, (cur, ev.idx, 2, 0))
                new = mark_compacted(g, new, ev.slot_live, cache_role(n))
            ev.out.replace_input_with(cur, new)
            ev.state.cache_outputs[n] = new

    def decode_mask(self, g, sdpa) -> None:
        a = sdpa_args(sdpa)
        m = a["attn_mask"]
        pv = past_values(sdpa)
        if tensor_val(pv).shape[-1] < 2:
            raise Unsupported("head dim < 2 cannot carry the dead-slot marker")
        with g.inserting_before(sdpa):
            new = g.call_function(decode_mask_for, (m if isinstance(m, fx.Node) else None, pv,
                                                    a["query"], bool(a["is_causal"])))
        set_sdpa_mask(sdpa, new, causal=False)

