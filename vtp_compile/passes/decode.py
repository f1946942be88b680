"""Decode graphs after a pruned prefill.

A pruned prefill leaves every layer's cache holding only the kept tokens (see
``compact._evict_early_cache``), so decode graphs need no reshaping: transformers builds their
mask from layer 0's cache length. That construction reads the first ``key_len`` columns of the
2-D attention mask, which is exact for left padding only; this pass makes the decode graph check
the padding side at run time (a no-op when nothing was evicted).
"""
from __future__ import annotations

import networkx as nx
import torch
import torch.fx as fx

from ..graph.fx_utils import is_param_like, sdpa_args, tensor_val, to_networkx
from ..graph.vlm_graph import VLMGraph


def apply_decode(vlm: VLMGraph) -> int:
    g = vlm.gm.graph
    att = sdpa_args(vlm.layers[0].sdpa)
    m = att["attn_mask"]
    if not isinstance(m, fx.Node):
        return 0  # no padding mask: nothing can be mis-masked
    nxg = to_networkx(g)
    ancestors = nx.ancestors(nxg, m)
    masks2d = [p for p in g.nodes if p.op == "placeholder" and p in ancestors and not is_param_like(p)
               and tensor_val(p) is not None and tensor_val(p).dim() == 2
               and not tensor_val(p).is_floating_point()]
    if len(masks2d) != 1:
        return 0
    (mask2d,) = masks2d
    with g.inserting_before(vlm.layers[0].sdpa):
        checked = g.call_function(torch.ops.vtp.check_left_padded.default, (mask2d, m))
    for lv in vlm.layers:
        if sdpa_args(lv.sdpa)["attn_mask"] is m:
            lv.sdpa.replace_input_with(m, checked)
    g.lint()
    return 1
