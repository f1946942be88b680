"""The M-RoPE position ids of a prefill graph: where Qwen-style models say which frame a visual
token belongs to (their temporal channel steps once per frame of a clip)."""
from __future__ import annotations

import torch
import torch.fx as fx

from .fx_utils import same_size, tensor_val
from .vlm_graph import VLMGraph

_INT = (torch.int64, torch.int32)


def mrope_positions(vlm: VLMGraph) -> tuple[fx.Node, int] | None:
    """``(node, channel)``: the ``[C, B, L]`` integer position ids (``C`` = 3: temporal, height,
    width; 4: transformers 5.x puts the text positions first) and the index of the temporal
    channel; None when the graph has none (one-dimensional positions). Graph inputs first, so the
    ids the model was given win over anything derived from them."""
    entry = tensor_val(vlm.layers[0].entry)
    if entry is None or entry.dim() != 3:
        return None
    B, L = entry.shape[:2]
    nodes = sorted(vlm.gm.graph.nodes, key=lambda n: n.op != "placeholder")
    for n in nodes:
        v = tensor_val(n)
        if v is not None and v.dtype in _INT and v.dim() == 3 and isinstance(v.shape[0], int) \
                and v.shape[0] in (3, 4) and same_size(v.shape[1], B) and same_size(v.shape[2], L):
            return n, v.shape[0] - 3
    return None
