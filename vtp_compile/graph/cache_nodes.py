"""Reading KV caches in a decoder graph: which nodes update a cache, which attention argument a
cache becomes, and transformers' static-cache writes. Graph reading only: what a pruned
prefill does to each cache is :mod:`vtp_compile.passes.kv`."""
from __future__ import annotations

import dataclasses
import operator

import torch.fx as fx

from .fx_utils import Unsupported, is_sdpa, is_static_cache_write, op_name, sdpa_args, tensor_val

# ops that only move, expand or reshape a cache on its way to attention (GQA repeat_kv, dtype)
PASS_THROUGH = frozenset({"expand", "reshape", "view", "contiguous", "to", "clone", "unsqueeze",
                          "float", "half", "bfloat16", "type_as", "repeat_interleave", "flatten",
                          "getitem", "transpose", "permute"})


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
            elif (op_name(u) in PASS_THROUGH or u.target is operator.getitem) and u.all_input_nodes[0] is x:
                frontier.append(u)
    return None


def role(cache: fx.Node) -> str:
    """:func:`cache_role`, or :class:`Unsupported` when it cannot be told."""
    r = cache_role(cache)
    if r is None:
        raise Unsupported(f"cannot tell whether cache tensor {cache.name} holds keys or values")
    return r


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


def root(n: fx.Node) -> fx.Node:
    """The tensor an attention argument reads, through GQA's expand/reshape."""
    for _ in range(8):
        if op_name(n) not in PASS_THROUGH or not n.all_input_nodes:
            break
        n = n.all_input_nodes[0]
    return n


@dataclasses.dataclass
class StaticWrite:
    """One ``buffer.index_copy_(2, slots, states)`` of transformers' ``StaticLayer.update`` and
    its counter."""
    node: fx.Node
    buffer: fx.Node
    slots: fx.Node      # arange(n) + counter
    states: fx.Node
    step: fx.Node       # counter.add_(n)


def static_write(n: fx.Node) -> StaticWrite:
    """Read a static cache write; :class:`Unsupported` when its slots are not transformers'
    ``arange(n) + counter`` form."""
    buffer, _, slots, states = n.args[:4]
    counter = None
    if isinstance(slots, fx.Node) and slots.op == "call_function" and slots.target is operator.add:
        for a in slots.args:
            v = tensor_val(a)
            if v is not None and v.dim() == 0 and not v.is_floating_point():
                counter = a
    step = None
    if counter is not None:
        step = next((u for u in counter.users if op_name(u) == "add_" and u.args[0] is counter), None)
    if step is None:
        raise Unsupported(f"static cache write {n.name}: its slots are not `arange(n) + counter` with "
                          "an in-place counter (transformers' StaticLayer), so vtp cannot place the "
                          "kept tokens in it")
    return StaticWrite(n, buffer, slots, states, step)


def static_writes(nodes) -> list[StaticWrite]:
    return [static_write(n) for n in nodes if is_static_cache_write(n)]


def buffer_of(sdpa_arg) -> fx.Node | None:
    """The static buffer an attention argument reads (through GQA's expand/reshape), or None."""
    if not isinstance(sdpa_arg, fx.Node):
        return None
    r = root(sdpa_arg)
    return r if any(is_static_cache_write(u) and u.args[0] is r for u in r.users) else None
