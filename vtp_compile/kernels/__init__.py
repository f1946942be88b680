"""Token-selection ops, one file per op family: a readable PyTorch reference (the CPU kernel),
the ``torch.library`` registration and a fake implementation for tracing.

Importing this package registers ``torch.ops.vtp.*``; it never imports triton.
"""
from . import cache, coverage, dart, dcp, divprune, dstp, nuwa, pdrop, scores, select, sparsevlm, splice, vision  # noqa: F401
