"""Tags for ops whose effect lives outside their tensors.

``STATEFUL``: ``torch.Tag.cudagraph_unsafe`` on the ops that read or write Python-side state
(:data:`vtp_compile.kernels.lowering.STATEFUL`). A CUDA graph replay skips the Python, so
Inductor must not capture them: under ``mode="reduce-overhead"`` it then runs the graphs that
hold them without CUDA graphs (or partitions around them) instead of replaying stale state.
Empty on a torch without the tag.
"""
import inspect

import torch

_TAG = getattr(torch.Tag, "cudagraph_unsafe", None)
STATEFUL = ({"tags": (_TAG,)} if _TAG is not None
            and "tags" in inspect.signature(torch.library.custom_op).parameters else {})
