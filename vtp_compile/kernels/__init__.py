"""Token-selection ops, one file per op family: a readable PyTorch reference (the CPU kernel),
the ``torch.library`` registration, a fake implementation for tracing, and how the op lowers
(its decomposition, or its CUDA kernel launching the Triton kernels of ``triton/<family>.py``;
:mod:`.registry`).

Importing this package registers ``torch.ops.vtp.*``; it never imports triton.
"""
from . import (cache, cdpruner, coverage, dart, dcp, decode_select, divprune, dstp, dycoke, fastvid, frames,  # noqa: F401
               nuwa, pdrop, scores, select, sparsevlm, splice, vidcom2, vision, visionzip)
from . import lowering  # noqa: F401,E402  (what Inductor decomposes)
