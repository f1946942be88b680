"""First-call compile time in a fresh process and in a restarted one sharing Inductor's cache.

    python benchmarks/compile_restart.py            # Inductor alone, then vtp (FastV, budget 64)

Each backend gets its own empty ``TORCHINDUCTOR_CACHE_DIR``; the same script runs twice in new
processes (cold, then warm: what a restarted server pays). The model is the CPU LLaVA-shaped one
of ``benchmarks/compile_time.py`` (Llama decoder hidden 1024 x 8 layers, 616-token prompt), 1
thread. Prints each run's first-call seconds and Inductor's FX-graph-cache counters.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time, torch
import vtp_compile
from torch._dynamo.utils import counters
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava
torch.set_num_threads(1)
vtp_compile.configure_dynamo()
spec = TinySpec(hidden=1024, intermediate=2816, layers=8, heads=16, kv_heads=16, image_size=384,
                patch=16, vocab=1024, vision_hidden=64, max_positions=2048, seed=0)
model = tiny_llava(spec)
inputs = make_inputs(spec, prefix=20, suffix=20, seed=0)
backend = sys.argv[1]
kw = {} if backend == "inductor" else {"options": {"method": "fastv", "budget": 64}}
with torch.inference_mode():
    model(**inputs)
    t = time.perf_counter()
    torch.compile(model, backend=backend, **kw)(**inputs)
    dt = time.perf_counter() - t
print(json.dumps({"first_call_s": round(dt, 1),
                  **{k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}}))
"""


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for backend in ("inductor", "vtp"):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache,
                   "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
            for run in ("cold", "warm"):
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", CHILD, backend], env=env, cwd=root,
                                     capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{backend:9} {run}: first call {res.pop('first_call_s'):6.1f} s   "
                      f"{res}   (process {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
