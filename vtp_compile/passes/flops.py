"""FLOP and KV-cache accounting for a decoder stack, from the graph's own weight shapes."""
from __future__ import annotations

import dataclasses

import torch

from ..graph import tp as tp_mod
from ..graph.fx_utils import sdpa_args, tensor_val
from ..graph.vlm_graph import LayerView


@dataclasses.dataclass(frozen=True)
class LayerCost:
    linear_params: int    # weights used per token (sum of in*out over the layer's linears)
    attn_width: int       # query heads * head dim
    kv_width: int         # 2 * kv heads * head dim (elements cached per token)

    def flops(self, q_len: int, k_len: int) -> int:
        return 2 * self.linear_params * q_len + 4 * self.attn_width * q_len * k_len


def layer_cost(lv: LayerView, tp=None) -> LayerCost:
    """The layer's cost for the whole model: under tensor parallelism (``tp``, a
    :class:`~vtp_compile.graph.tp.TPInfo`) weights count with their global shapes and split
    heads with every rank's."""
    params = 0
    for n in lv.nodes:
        if n.op == "call_function" and n.target in (torch._C._nn.linear, torch.nn.functional.linear):
            w = _global_weight(n.args[1])
            params += int(w.shape[0]) * int(w.shape[1])
    if lv.sdpa is None:      # no attention (linear attention): its state is not a KV cache
        return LayerCost(params, 0, 0)
    att = sdpa_args(lv.sdpa)
    q, k = tensor_val(att["query"]), tensor_val(att["key"])
    kv_heads = int(k.shape[1])
    if not att.get("enable_gqa") and tensor_val(att["key"]).shape[1] == q.shape[1]:
        # k was expanded to all query heads (repeat_kv); the cache holds the unexpanded heads
        kv_heads = _cached_heads(att["key"], kv_heads)
    ranks = tp.size if tp_mod.heads_sharded(tp, lv.nodes, att["query"]) else 1
    return LayerCost(params, ranks * int(q.shape[1]) * int(q.shape[-1]),
                     ranks * 2 * kv_heads * int(k.shape[-1]))


def _global_weight(n):
    """A linear's weight; the DTensor's global shape for ``W.to_local()`` (tensor parallel)."""
    if getattr(n, "op", None) == "call_method" and n.target == "to_local" and tp_mod.is_dtensor(tensor_val(n.args[0])):
        return tensor_val(n.args[0])
    return tensor_val(n)


def _cached_heads(k_node, default: int) -> int:
    # walk back through reshape/expand/getitem to the cache `cat`
    n = k_node
    for _ in range(4):
        if not hasattr(n, "args") or not n.args:
            break
        n = n.args[0]
        v = tensor_val(n)
        if v is not None and v.dim() == 4:
            return int(v.shape[1])
    return default


def stack_flops(costs: list[LayerCost], lengths: list[int]) -> int:
    """Prefill FLOPs when layer i runs on ``lengths[i]`` tokens (causal attention ~ L*L/2 ignored)."""
    return sum(c.flops(L, L) for c, L in zip(costs, lengths))
