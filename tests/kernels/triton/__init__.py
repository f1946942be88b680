"""Triton kernels against their references, eagerly, in Triton's CPU interpreter
(``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` before triton is imported)."""
import importlib
import os
import sys

import pytest


def interpreted(name: str):
    """``vtp_compile.kernels.triton.<name>``, its kernels decorated for the interpreter."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET=1 was not set before triton was imported (a GPU is present?)")
    pytest.importorskip("triton")
    full = f"vtp_compile.kernels.triton.{name}"
    mod = importlib.import_module(full)
    if not getattr(mod, "_interpreted", False):   # decorated earlier without the interpreter
        mod = importlib.reload(sys.modules[full])
        mod._interpreted = True
    return mod
