"""Token-selection ops, one file per op family: a readable PyTorch reference (the CPU kernel),
the ``torch.library`` registration and a fake implementation for tracing.

Importing this package registers ``torch.ops.vtp.*``; it never imports triton.
"""
from . import (cache, cdpruner, coverage, dart, dcp, divprune, dstp, nuwa, pdrop, scores,  # noqa: F401
               select, sparsevlm, splice, vision, visionzip)
from . import cuda, lowering  # noqa: F401,E402  (CUDA kernels; what Inductor decomposes)
