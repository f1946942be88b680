"""Triton kernels for the ops that plain tensor math expresses poorly (CUDA only).

One file per op family: the ``@triton.jit`` kernels and the launcher that
the op family's file (``kernels/<family>.py``) registers as the op's CUDA kernel. Nothing here is imported by
``import vtp_compile``: the CUDA kernels import these modules on their first call, and the
tests import them under ``TRITON_INTERPRET=1`` (which must be set before the first import: the
interpreter is chosen when a kernel is decorated).

Launchers never read device data on the host, except :func:`.select.select_keep`'s one
sanctioned read of the compacted width (see :mod:`vtp_compile.kernels.select`).
"""
from __future__ import annotations

import os


def interpreted() -> bool:
    """Whether kernels decorated from now on run in Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
