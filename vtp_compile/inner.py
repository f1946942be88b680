"""The inner backend: what compiles the (rewritten) graph after vtp's passes."""
from __future__ import annotations

import contextlib
import logging

import torch
import torch.fx as fx

from .config import PruneConfig

_log = logging.getLogger("vtp_compile")
# Inductor's peak-memory reordering validates its own dependency graph and, on some graphs,
# finds a cycle that the scheduler's order does not have (seen on VidCom2 prefill graphs in CI
# and in a full local test run, never with the test alone; pytorch/pytorch#161205 fixed one such
# case, and Inductor itself only re-raises that validation outside fbcode)
_CYCLE = "Cycle detected in memory planning graph"


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
        if "reorder_for_peak_memory" not in patches and not _on_gpu(example_inputs):
            patches["reorder_for_peak_memory"] = False     # see _on_gpu
        register_decompositions()
        with unbacked_stride_order():
            before = set(vars(gm)), dict(gm.meta)
            try:
                return compile_fx(gm, example_inputs, config_patches=patches)
            except Exception as e:   # noqa: BLE001 (re-raised unless it is that one failure)
                if not _memory_planning_cycle(e) or patches.get("reorder_for_peak_memory") is False:
                    raise
            _restore(gm, *before)
            _log.warning("vtp: Inductor's peak-memory reordering found a dependency cycle in this "
                         "graph (an Inductor bug); compiling it again without that reordering "
                         "(inductor option reorder_for_peak_memory=False)")
            return compile_fx(gm, example_inputs,
                              config_patches={**patches, "reorder_for_peak_memory": False})
    from torch._dynamo import lookup_backend
    return lookup_backend(inner)(gm, example_inputs)


def _on_gpu(example_inputs) -> bool:
    """Whether the graph runs on an accelerator. On CPU vtp graphs compile without Inductor's
    peak-memory reordering unless the user's ``inductor_config`` asks for it: on torch 2.13 CPU
    that pass once ordered a fused scatter after a kernel that read its result (a silent wrong
    selection, tests/test_inductor.py::test_frame_priority_survives_peak_memory_reordering) and
    once reported a dependency cycle (below); it only lowers peak memory, which on a CPU costs
    little. GPUs keep Inductor's default."""
    return any(isinstance(t, torch.Tensor) and t.device.type not in ("cpu", "meta")
               for t in example_inputs)


def _restore(gm: fx.GraphModule, attrs: set, meta: dict) -> None:
    """Undo what a failed ``compile_fx`` left on ``gm`` (it sets ``_param_name_to_source``, after
    which AOT autograd expects Dynamo's placeholder sources, which a copied graph lacks)."""
    for name in set(vars(gm)) - attrs:
        delattr(gm, name)
    gm.meta.clear()
    gm.meta.update(meta)


def _memory_planning_cycle(e: BaseException | None) -> bool:
    seen = 0
    while e is not None and seen < 8:
        if _CYCLE in str(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


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
