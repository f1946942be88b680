"""Small helpers for reading Dynamo FX graphs."""
from __future__ import annotations

import operator
import re
from typing import Any

import networkx as nx
import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

SDPA_TARGETS = {
    torch._C._nn.scaled_dot_product_attention,
    torch.nn.functional.scaled_dot_product_attention,
}
_LAYER_RE = re.compile(r"^(?P<list>.+)\.(?P<idx>\d+)$")


class Unsupported(Exception):
    """The graph has a structure the analysis cannot prove safe to rewrite."""


class StaticCacheUnsupported(Unsupported):
    """A static KV cache (``cache_implementation="static"``) in a form vtp does not prune
    (sliding-window buffers, or a method that needs the dynamic cache): warned once."""


def is_static_cache_write(n: Any) -> bool:
    """``buffer.index_copy_(2, cache_position, states)``: transformers' ``StaticLayer.update``
    (static and offloaded-static caches) writing a layer's keys or values at their slots."""
    if n.op == "call_method":
        hit = n.target in ("index_copy_", "index_copy")
    elif n.op == "call_function":
        hit = n.target in (torch.Tensor.index_copy_, torch.Tensor.index_copy, torch.index_copy,
                           torch.ops.aten.index_copy_.default, torch.ops.aten.index_copy.default)
    else:
        return False
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    v = val(n.args[0]) if n.args else None
    return hit and isinstance(v, torch.Tensor) and v.dim() == 4 and dim in (2, -2)


def val(n: Any) -> Any:
    """The fake value Dynamo recorded for a node (or the constant itself)."""
    if isinstance(n, fx.Node):
        return n.meta.get("example_value", n.meta.get("val"))
    return n


def tensor_val(n: Any) -> torch.Tensor | None:
    v = val(n)
    return v if isinstance(v, torch.Tensor) else None


def same_size(a, b) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    try:
        return bool(statically_known_true(a == b))
    except Exception:
        return False


def hint(x) -> int:
    """A size's value for the example inputs, without adding a guard (no recompile per size)."""
    if isinstance(x, int):
        return x
    from torch.fx.experimental import symbolic_shapes as ss
    fn = getattr(ss, "optimization_hint", None) or getattr(ss, "size_hint", None)
    if fn is not None:
        return int(fn(x))
    return int(x.node.hint)


def is_one(a) -> bool:
    return same_size(a, 1)


def is_param_like(n: fx.Node) -> bool:
    return n.op == "get_attr" or (n.op == "placeholder" and "_parameters_" in n.name)


def module_paths(n: fx.Node) -> list[str]:
    stack = n.meta.get("nn_module_stack") or {}
    return [v[0] for v in stack.values()]


def layer_path(n: fx.Node) -> tuple[str, int] | None:
    """The innermost ``<ModuleList path>.<index>`` module that owns ``n``, if any."""
    for path in reversed(module_paths(n)):
        m = _LAYER_RE.match(path)
        if m:
            return m.group("list"), int(m.group("idx"))
    return None


def is_sdpa(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target in SDPA_TARGETS


def sdpa_args(n: fx.Node) -> dict:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    out = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
    out.update(dict(zip(names, n.args)))
    out.update(n.kwargs)
    return out


def is_masked_scatter(n: fx.Node) -> bool:
    return ((n.op == "call_method" and n.target == "masked_scatter")
            or (n.op == "call_function" and n.target in (torch.Tensor.masked_scatter, torch.masked_scatter)))


def to_networkx(graph: fx.Graph) -> nx.DiGraph:
    g = nx.DiGraph()
    for n in graph.nodes:
        g.add_node(n)
        for u in n.users:
            g.add_edge(n, u)
    return g


def tensor_inputs(n: fx.Node) -> list[fx.Node]:
    return [a for a in n.all_input_nodes if tensor_val(a) is not None]


def insert_after(graph: fx.Graph, anchor: fx.Node):
    """Context that inserts new nodes, in creation order, right after ``anchor``."""
    return graph.inserting_before(anchor.next)


def _signature(n: fx.Node):
    """What a node computes from, by input names: equal signatures on the same inputs give the
    same value (names survive ``graph_copy``)."""
    def key(a):
        if isinstance(a, fx.Node):
            return a.name
        if isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return ("sym", str(a.node.expr))    # compared as text: no guard is installed
        return a
    return (n.op, n.target, fx.node.map_aggregate((n.args, n.kwargs), key))


def stamp_meta(gm: fx.GraphModule) -> None:
    """Record each node's signature next to the value Dynamo traced for it: ``refresh_meta``
    then re-propagates only what a pass inserted or rewired, and what reads it."""
    for n in gm.graph.nodes:
        n.meta["vtp_sig"] = _signature(n)


def _touched(n: fx.Node) -> bool:
    """Inserted or rewired by a pass since ``stamp_meta`` (or never given a value)."""
    if "vtp_sig" not in n.meta or n.meta.get("example_value", n.meta.get("val")) is None:
        return True
    try:
        return not bool(n.meta["vtp_sig"] == _signature(n))
    except Exception:       # an argument without a meaningful ==
        return True


def _same_meta(a, b) -> bool:
    """Equal fake-value metadata (dtype, device, symbolic sizes and strides), compared on the
    expressions so that no guard is installed."""
    import torch.utils._pytree as pytree
    la, sa = pytree.tree_flatten(a)
    lb, sb = pytree.tree_flatten(b)
    if sa != sb or len(la) != len(lb):
        return False

    def key(x):
        return x.node.expr if isinstance(x, torch.SymInt) else x
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            if (x.dtype != y.dtype or x.device != y.device or x.dim() != y.dim()
                    or any(key(p) != key(q) for p, q in zip(x.shape, y.shape))
                    or any(key(p) != key(q) for p, q in zip(x.stride(), y.stride()))):
                return False
        elif isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)) or isinstance(
                y, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            if not (type(x) is type(y) and x.node.expr == y.node.expr):
                return False
        elif x != y:
            return False
    return True


def _KeepScalars(gm, mode, incremental=False):
    """FakeTensorProp that keeps Dynamo's scalar values (an ``.item()`` re-run would make a
    fresh unbacked symbol that later ops cannot reason about). ``incremental``: a node no pass
    touched, whose inputs' values did not change, keeps its value; a re-run node whose value
    has the old metadata does not make its users re-run (a rewritten decode mask, say)."""
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    class Prop(FakeTensorProp):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.changed = set()     # re-run nodes whose value's metadata changed

        def run_node(self, n):
            old = n.meta.get("example_value", n.meta.get("val"))
            if n.op == "call_method" and n.target == "item" and old is not None:
                n.meta["val"] = old
                return old
            if not incremental or n.op in ("placeholder", "output"):
                return super().run_node(n)
            if not _touched(n) and not any(a in self.changed for a in n.all_input_nodes):
                return old      # its inputs and arguments are what Dynamo traced
            for a in n.all_input_nodes:     # an old value (Dynamo's mode) read by a re-run node
                self.env[a] = _into(mode, self.env[a])
            new = super().run_node(n)
            if old is None or not _same_meta(old, n.meta.get("val")):
                self.changed.add(n)
            return new

    return Prop(gm, mode)


def _into(mode, v):
    """``v`` (fake tensors, possibly nested) as values of ``mode``: Dynamo traced in a sibling
    mode that shares the shape environment."""
    import torch.utils._pytree as pytree

    def one(t):
        if isinstance(t, torch.Tensor) and getattr(t, "fake_mode", None) is not mode:
            return mode.from_tensor(t)
        return t
    return pytree.tree_map(one, v)


def refresh_meta(gm: fx.GraphModule, example_inputs, incremental: bool = True) -> None:
    """Re-run fake propagation so every node's ``example_value`` matches the rewritten graph.
    Nodes ``stamp_meta`` recorded and no pass touched (with every input untouched) keep their
    values: on a pruned prefill that is everything before the first site, a large share of
    each compile's time when every node is re-run (``incremental=False``)."""
    from torch._guards import TracingContext

    ctx = TracingContext.try_get()
    if ctx is None or ctx.fake_mode is None:
        return
    # Propagate from the placeholders' own symbolic values, moved into the backend's fake mode
    # (Dynamo traces in a sibling mode sharing the shape env). Re-fakeifying the real example
    # inputs instead loses dynamic sizes under inference_mode and fails on recompiles.
    mode = ctx.fake_mode
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    vals = [n.meta.get("example_value", n.meta.get("val")) for n in placeholders]
    if len(vals) != len(example_inputs) or any(v is None for v in vals):
        _KeepScalars(gm, mode).propagate(*example_inputs)
    else:
        prop = _KeepScalars(gm, mode, incremental)
        vals = [_into(mode, v) for v in vals]
        # the Python dispatcher gives composite ops (expand in masked_scatter's meta) their
        # SymInt-aware paths; without it, inference_mode hits the concrete-int C++ kernels
        from torch._dispatch.python import enable_python_dispatcher
        # constants a pass attached with get_attr (e.g. ALVTS selectors) are real tensors
        old = mode.allow_non_fake_inputs
        mode.allow_non_fake_inputs = True
        try:
            with mode, enable_python_dispatcher():
                prop.propagate_dont_convert_inputs(*vals)
        finally:
            mode.allow_non_fake_inputs = old
    for n in gm.graph.nodes:
        if "val" in n.meta:
            n.meta["example_value"] = n.meta["val"]
    stamp_meta(gm)


PYTHON_OPS = {
    operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.truediv: "div",
    operator.neg: "neg", operator.pow: "pow", operator.and_: "bitwise_and",
    operator.or_: "bitwise_or", operator.invert: "bitwise_not", operator.eq: "eq",
    operator.ne: "ne", operator.lt: "lt", operator.le: "le", operator.gt: "gt", operator.ge: "ge",
    operator.floordiv: "floor_divide",
    # in-place forms (``x /= y`` in a modeling file, e.g. Mixtral's router): the same values
    operator.iadd: "add", operator.isub: "sub", operator.imul: "mul", operator.itruediv: "div",
    operator.ifloordiv: "floor_divide", operator.ipow: "pow", operator.iand: "bitwise_and",
    operator.ior: "bitwise_or",
}
IDENTITY_METHODS = {"to", "float", "half", "bfloat16", "double", "type_as", "contiguous", "clone",
                    "detach", "type", "requires_grad_"}


def op_name(n: fx.Node) -> str | None:
    if n.op == "call_method":
        return n.target
    if n.op == "call_function":
        if n.target in PYTHON_OPS:
            return PYTHON_OPS[n.target]
        return getattr(n.target, "__name__", None)
    return None


def is_pointwise(n: fx.Node) -> bool:
    """True when the node is an elementwise op with broadcasting (per ATen's pointwise tag)."""
    name = op_name(n)
    if name is None:
        return False
    if name in IDENTITY_METHODS or name in ("dropout", "silu", "gelu", "relu", "where", "masked_fill",
                                            "full_like", "zeros_like", "ones_like", "empty_like"):
        return True
    name = name.rstrip("_")
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return False
    for ov in packet.overloads():
        if torch.Tag.pointwise in getattr(packet, ov).tags:
            return True
    return False


def set_sdpa_mask(sdpa: fx.Node, new: fx.Node, causal: bool = False) -> None:
    """Point an SDPA call at ``new`` as its mask (and set ``is_causal``)."""
    args, kwargs = list(sdpa.args), dict(sdpa.kwargs)
    if len(args) > 3:
        args[3] = new
    else:
        kwargs["attn_mask"] = new
    if len(args) > 5:
        args[5] = causal
    else:
        kwargs["is_causal"] = causal
    sdpa.args, sdpa.kwargs = tuple(args), kwargs
