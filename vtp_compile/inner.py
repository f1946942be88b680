"""The inner backend: what compiles the (rewritten) graph after vtp's passes."""
from __future__ import annotations

import contextlib

import torch
import torch.fx as fx

from .config import PruneConfig


def lower(gm: fx.GraphModule, example_inputs, cfg: PruneConfig):
    """Hand the graph to the inner backend: Inductor with the mode's and the user's config
    patches, another registered backend by name, or the user's callable."""
    inner = cfg.inner_backend
    if callable(inner):
        return inner(gm, example_inputs)
    if inner == "eager":
        return gm.forward
    if inner == "inductor":
        import torch._inductor
        from torch._inductor.compile_fx import compile_fx
        patches = dict(torch._inductor.list_mode_options(cfg.mode)) if cfg.mode != "default" else {}
        patches.update(cfg.inductor_config)
        register_decompositions()
        with unbacked_stride_order():
            return compile_fx(gm, example_inputs, config_patches=patches)
    from torch._dynamo import lookup_backend
    return lookup_backend(inner)(gm, example_inputs)


def register_decompositions() -> None:
    """The vtp ops that are plain tensor math are traced through by Inductor (fused into the
    code it generates): their decompositions go into Inductor's own tables, once per process.

    Not ``compile_fx(..., decompositions=...)``: Inductor cannot build an FX-graph-cache key
    from an explicit table (its default table holds a pybind11 function that does not pickle),
    so every vtp graph bypassed the cache, and a restarted process compiled it all again. The
    cache key is the graph after AOT autograd, which already holds the decomposed math, so it
    stays exact when vtp's decompositions change. Only graphs that call vtp ops are affected.
    """
    from torch._inductor import decomposition as D
    from .kernels.lowering import DECOMPOSED
    ours = {getattr(torch.ops.vtp, name).default: fn for name, fn in DECOMPOSED.items()}
    tables = [D.decompositions]
    if hasattr(D, "fast_random_decomps"):
        tables.append(D.fast_random_decomps())    # functools.cache'd: the dict Inductor reads
    for table in tables:
        if any(table.get(op) is not fn for op, fn in ours.items()):
            table.update(ours)


@contextlib.contextmanager
def unbacked_stride_order():
    """Let Inductor order strides that hold the compacted width.

    Inductor's ``FlexibleLayout.same_ordered`` (freezing a buffer that an SDPA input views, e.g.
    a key behind grouped-query attention's expand) sorts the strides by *guarding* hints, and the
    compacted width, an unbacked size, has none: the compile failed with "Could not extract
    specialized integer from data-dependent expression" (a chain of random then FastV on a
    3-head, 1-KV-head model). The order is a layout choice, not a guard, so while vtp's graph
    is lowered a stride that holds an unbacked size is ordered by its optimization hint instead;
    strides without one are ordered exactly as before. Outside vtp's compiles nothing changes.
    """
    from torch._inductor import ir
    from torch._inductor.virtualized import V
    import sympy
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    original = ir.FlexibleLayout.__dict__.get("same_ordered")
    if not isinstance(original, staticmethod) or not hasattr(ir.FlexibleLayout, "fill_ordered"):
        yield       # another Inductor: leave it as it is
        return

    def same_ordered(sizes, stride):
        if not any(isinstance(s, sympy.Basic) and free_unbacked_symbols(s) for s in stride):
            return original.__func__(sizes, stride)
        assert len(sizes) == len(stride)
        hints = V.graph.sizevars.optimization_hints(stride)
        fill_order = sorted(range(len(stride)), key=hints.__getitem__)
        return ir.FlexibleLayout.fill_ordered(sizes, fill_order)

    ir.FlexibleLayout.same_ordered = staticmethod(same_ordered)
    try:
        yield
    finally:
        ir.FlexibleLayout.same_ordered = original
