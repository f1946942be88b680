"""The inner backend: what compiles the (rewritten) graph after vtp's passes."""
from __future__ import annotations

import contextlib
import dataclasses
import logging

import torch
import torch.fx as fx

from .config import PruneConfig

_log = logging.getLogger("vtp_compile")


@dataclasses.dataclass(frozen=True)
class KnownFailure:
    """An Inductor bug that some vtp graphs hit, recognised by its message, and the config patch
    under which the same graph compiles. ``lower`` compiles such a graph again with the patch and
    logs one warning; any other error is raised as it is."""
    says: tuple[str, ...]          # every one of these is in the error (or an error it chains)
    patch: dict
    what: str                      # the warning: what happened and what vtp does about it

    def matches(self, e: BaseException | None) -> bool:
        texts, seen = [], 0
        while e is not None and seen < 8:
            texts.append(str(e))
            e, seen = e.__cause__ or e.__context__, seen + 1
        return all(any(s in t for t in texts) for s in self.says)


KNOWN_FAILURES = (
    # Inductor's peak-memory reordering validates its own dependency graph and, on some graphs,
    # finds a cycle that the scheduler's order does not have (seen on VidCom2 prefill graphs in
    # CI and in a full local test run, never with the test alone; pytorch/pytorch#161205 fixed
    # one such case, and Inductor itself only re-raises that validation outside fbcode)
    KnownFailure(("Cycle detected in memory planning graph",), {"reorder_for_peak_memory": False},
                 "Inductor's peak-memory reordering found a dependency cycle in this graph (an "
                 "Inductor bug); compiling it again without that reordering (inductor option "
                 "reorder_for_peak_memory=False)"),
    # Inductor's C++ code generation (torch 2.13, CPU) can emit an indirect-indexing bounds check
    # before the line that defines the index it checks, in a transposed (2-D tiled) vectorized
    # loop: g++ says "'tmp27' was not declared in this scope" on `TORCH_CHECK(tmp27 < ks3, "index
    # out of bounds: ...")` (a SparseVLM dynamic graph, tests/test_inductor.py; the same bug class
    # as pytorch/pytorch#193581). Without the checks the kernel compiles; that graph's indices
    # (vtp's gathers, in range by construction, and the model's own) are then not checked
    KnownFailure(("was not declared in this scope", "index out of bounds"),
                 {"assert_indirect_indexing": False},
                 "Inductor's C++ code for this graph checks an index before defining it (an "
                 "Inductor bug); compiling it again without Inductor's index bounds checks "
                 "(inductor option assert_indirect_indexing=False)"),
)


# Inductor settings vtp graphs compile with on CPU, unless the user's ``inductor_config`` sets
# them (GPU graphs keep Inductor's defaults: neither was measured on a GPU)
CPU_DEFAULTS = {
    # see _on_gpu
    "reorder_for_peak_memory": False,
    # a tensor read by more than one kernel is computed once into a buffer (Inductor's default:
    # more than 4). vtp's gathers (the hidden state, rotary tables and masks read through the
    # kept indices) are otherwise inlined into every reader, and each reader is a kernel of its
    # own: FastV's graph compiles 24 C++ kernels instead of 33, its first compile ~1.1x
    # Inductor's instead of ~1.3x, in the same prefill time (docs/compile_time.md)
    "realize_reads_threshold": 1,
}


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
        patches = dict(torch._inductor.list_mode_options(cfg.mode)) if cfg.mode != "default" else {}
        patches.update(cfg.inductor_config)
        if not _on_gpu(example_inputs):
            patches = {**CPU_DEFAULTS, **patches}
        register_decompositions()
        with unbacked_stride_order():
            return _compile_fx(gm, example_inputs, patches)
    from torch._dynamo import lookup_backend
    return lookup_backend(inner)(gm, example_inputs)


def _on_gpu(example_inputs) -> bool:
    """Whether the graph runs on an accelerator. On CPU vtp graphs compile without Inductor's
    peak-memory reordering unless the user's ``inductor_config`` asks for it: on torch 2.13 CPU
    that pass once ordered a fused scatter after a kernel that read its result (a silent wrong
    selection, tests/test_inductor.py::test_frame_priority_survives_peak_memory_reordering) and
    once reported a dependency cycle (KNOWN_FAILURES); it only lowers peak memory, which on a CPU
    costs little. GPUs keep Inductor's default."""
    return any(isinstance(t, torch.Tensor) and t.device.type not in ("cpu", "meta")
               for t in example_inputs)


def _restore(gm: fx.GraphModule, attrs: set, meta: dict) -> None:
    """Undo what a failed ``compile_fx`` left on ``gm`` (it sets ``_param_name_to_source``, after
    which AOT autograd expects Dynamo's placeholder sources, which a copied graph lacks)."""
    for name in set(vars(gm)) - attrs:
        delattr(gm, name)
    gm.meta.clear()
    gm.meta.update(meta)


def _compile_fx(gm: fx.GraphModule, example_inputs, patches: dict):
    """``compile_fx``, compiled again under a known failure's patch when it fails with that
    failure (a patch already in force, from an earlier try or the user's options, is not tried
    again: each retry adds one, so this ends)."""
    from torch._inductor.compile_fx import compile_fx
    before = set(vars(gm)), dict(gm.meta)
    while True:
        try:
            return compile_fx(gm, example_inputs, config_patches=patches)
        except Exception as e:   # noqa: BLE001 (re-raised unless it is a known failure)
            known = next((k for k in KNOWN_FAILURES if k.matches(e)
                          and any(patches.get(n) != v for n, v in k.patch.items())), None)
            if known is None:
                raise
        _restore(gm, *before)
        _log.warning("vtp: %s", known.what)
        patches = {**patches, **known.patch}


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
