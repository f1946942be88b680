"""Decode graphs after a pruned prefill: masks read from the caches themselves.

A pruned prefill leaves compacted caches whose dead slots are marked
(:mod:`vtp_compile.kernels.cache`). transformers builds a decode step's mask as if cache column
``j`` were prompt position ``j``; this pass gives every attention call
``decode_mask(its mask, its layer's past values)`` instead, which keeps transformers' mask for
rows whose cache was not compacted and attends to the live columns of rows whose cache was. No
state crosses calls and any padding side works. A static cache (:mod:`.static_cache`) keeps
positions: its mask only loses the dead slots.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..graph.fx_utils import Unsupported, op_name, sdpa_args, tensor_val
from ..graph.vlm_graph import VLMGraph
from .cache_layout import _PASS_THROUGH, is_cache_update
from . import static_cache
from .compact import set_mask

ops = torch.ops.vtp


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
        if not isinstance(n, fx.Node) or op_name(n) not in _PASS_THROUGH or not n.all_input_nodes:
            break
        n = n.all_input_nodes[0]
    raise Unsupported(f"cannot find the value cache that {sdpa.name} reads")


def apply_decode(vlm: VLMGraph) -> int:
    """Replace every layer's decode mask; returns the number of attention calls changed."""
    g = vlm.gm.graph
    for lv in vlm.attention_layers:
        a = sdpa_args(lv.sdpa)
        m = a["attn_mask"]
        values = static_cache.values_buffer(a)
        if values is not None:      # a static cache: positional, dead slots marked
            with g.inserting_before(lv.sdpa):
                new = static_cache.positional_mask(g, lv.sdpa, values, None)
            set_mask(lv.sdpa, new, causal=False)
            continue
        pv = past_values(lv.sdpa)
        if tensor_val(pv).shape[-1] < 2:
            raise Unsupported("head dim < 2 cannot carry the dead-slot marker")
        with g.inserting_before(lv.sdpa):
            new = g.call_function(decode_mask_for, (m if isinstance(m, fx.Node) else None, pv,
                                                    a["query"], bool(a["is_causal"])))
        set_mask(lv.sdpa, new, causal=False)
    g.lint()
    return len(vlm.attention_layers)
