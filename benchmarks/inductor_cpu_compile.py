"""Where an Inductor compile of a pruned tiny LLaVA spends its CPU on this machine: the Python
side (Dynamo, vtp's passes, Inductor's lowering) against the C++ compiler it runs as a child
process, for the first (static) and the second (dynamic) graph.

    python benchmarks/inductor_cpu_compile.py                         # -O3, the default
    TORCHINDUCTOR_DEBUG_COMPILE=1 python benchmarks/inductor_cpu_compile.py   # -O0
    python benchmarks/inductor_cpu_compile.py --simdlen 1             # no vectorisation

Each run uses a fresh Inductor cache and compiles in-process (compile_threads=1), so the
compiler's CPU shows up as the children's CPU time.
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile


def _cpu() -> tuple[float, float]:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simdlen", type=int, default=None)
    args = ap.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp())
    import torch
    import torch._inductor.config as ic
    from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

    torch.set_num_threads(1)
    ic.compile_threads = 1
    if args.simdlen is not None:
        ic.cpp.simdlen = args.simdlen
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    x = make_inputs(spec, batch=2, pad=(0, 2))
    with torch.no_grad():
        model(**x)
        a = _cpu()
        fast = torch.compile(model, backend="vtp", options={"method": "fastv", "budget": 5, "layer": 1})
        fast(**x)
        b = _cpu()
        fast(**make_inputs(spec, batch=3, pad=(0, 2, 1), suffix=5))
        c = _cpu()
    print(f"static graph: python {b[0] - a[0]:.1f} s, C++ compiler {b[1] - a[1]:.1f} s | "
          f"dynamic graph: python {c[0] - b[0]:.1f} s, C++ compiler {c[1] - b[1]:.1f} s")


if __name__ == "__main__":
    main()
