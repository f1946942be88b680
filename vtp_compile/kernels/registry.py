"""How each ``torch.ops.vtp`` op reaches Inductor, declared in the op family's own file.

Each op family file (``kernels/<family>.py``) holds, for its ops: the PyTorch reference (the CPU
kernel), the ``torch.library`` registration, the fake, and how the op lowers:

* :func:`decomposed`: the function Inductor traces instead of the op (plain tensor math);
* :func:`triton_kernel`: the op stays a call; its CUDA kernel (registered beside it with
  ``torch.library.register_kernel``) launches the Triton kernels of ``kernels/triton/<family>.py``
  (kept in their own file so that ``import vtp_compile`` never imports triton, and so that
  ``TRITON_INTERPRET`` is read when they are decorated, not when the op is defined);
* :func:`stateful`: the op reads or writes Python-side state; its registration takes
  ``**STATEFUL_TAGS`` so that CUDA graphs never capture it.

:mod:`.lowering` collects the tables and hands Inductor the decompositions.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

DECOMPOSED: dict[str, Callable] = {}
TRITON: dict[str, str] = {}
STATEFUL: dict[str, str] = {}

# ``torch.Tag.cudagraph_unsafe`` for the stateful ops: a CUDA graph replay skips the Python, so
# Inductor must not capture them (under mode="reduce-overhead" it runs the graphs that hold them
# without CUDA graphs, or partitions around them). Empty on a torch without the tag.
_TAG = getattr(torch.Tag, "cudagraph_unsafe", None)
STATEFUL_TAGS = ({"tags": (_TAG,)} if _TAG is not None
                 and "tags" in inspect.signature(torch.library.custom_op).parameters else {})


def decomposed(name: str, fn: Callable) -> None:
    """``vtp::name`` is traced through by Inductor as ``fn`` (same signature as the op)."""
    DECOMPOSED[name] = fn


def triton_kernel(name: str, why: str) -> None:
    """``vtp::name`` stays a call; its CUDA kernel launches Triton kernels (``why``: what plain
    ops express poorly)."""
    TRITON[name] = why


def stateful(name: str, why: str) -> None:
    """``vtp::name`` reads or writes Python-side state (``why``)."""
    STATEFUL[name] = why
