"""How each ``torch.ops.vtp`` op reaches Inductor.

* **decomposed**: plain tensor math. Its reference (functional and free of host reads) is
  handed to Inductor as a decomposition, so Inductor traces through it, fuses it with its
  neighbours and generates the kernels (Triton on CUDA, C++ on CPU). The op stays an op in the
  FX graph the passes work on (the passes find their own nodes by it) and for other inner
  backends.
* **triton**: steps plain ops express poorly (per-row top-k in position order with a
  data-dependent width, greedy max-min and farthest-point selection, greedy DPP MAP, k-means
  rounds, PDrop's bisection). The op stays a call; its CUDA kernel launches hand-written Triton kernels
  (registered in the op family's file), its CPU kernel is the reference.
* **stateful**: ops that read or write Python-side state (DSTP's runtime state, the vision
  internals recorded by ``attach``); they stay extern calls on every device and cannot be
  replayed by CUDA graphs (see :mod:`vtp_compile.shift_state`).

There is no "extern" class any more: every op the passes insert reaches Inductor either as
code it generates or as a declared Triton kernel (stateful ops aside). Where a method's op
mixes both (CDPruner: kernel matrix, then greedy MAP), its decomposition builds the plain part
and calls the Triton op for the rest. None of these choices was measured on a GPU (none was
available); each kernel's or decomposition's docstring says why it was made.

A new op declares its class in its family's file (:mod:`.registry`;
``tests/kernels/test_lowering.py`` checks every registered op). :func:`decompositions` is what :func:`vtp_compile.inner.lower` gives Inductor.
"""
from __future__ import annotations


import torch

# every op family registers its ops and declares how they lower (kernels/registry.py)
from . import (cache, cdpruner, coverage, dart, dcp, divprune, dstp, dycoke,  # noqa: F401
               fastvid, frames, nuwa, pdrop, scores, select, sparsevlm, splice, vidcom2, vision,
               visionzip)
from .registry import DECOMPOSED, STATEFUL, TRITON

__all__ = ["DECOMPOSED", "TRITON", "STATEFUL", "decompositions"]


def decompositions() -> dict:
    """Inductor's default decomposition table plus the decomposed vtp ops."""
    from torch._inductor.decomposition import select_decomp_table
    table = dict(select_decomp_table())
    # the same table whatever the log level: the generated code never depends on logging
    # (dist_consistency logs κ per call at debug level only where it runs as an op: the eager
    # and aot_eager inner backends)
    for name, fn in DECOMPOSED.items():
        table[getattr(torch.ops.vtp, name).default] = fn
    return table
