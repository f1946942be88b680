"""The inner backend (vtp_compile/inner.py): vtp graphs use Inductor's FX graph cache."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = r"""
import json, torch
import vtp_compile
from torch._dynamo.utils import counters
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava
torch.set_num_threads(1)
vtp_compile.configure_dynamo()
spec = TinySpec(layers=2)
model = tiny_llava(spec)
inputs = make_inputs(spec, prefix=2, suffix=3, seed=0)
with torch.no_grad():
    model(**inputs)
    out = torch.compile(model, backend="vtp", options={"method": "fastv", "budget": 3, "layer": 1})(**inputs)
print(json.dumps({k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}))
"""


@pytest.mark.inductor
def test_a_second_process_reuses_the_compiled_graph(tmp_path):
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold.get("fxgraph_cache_miss", 0) >= 1 and not cold.get("fxgraph_cache_bypass"), cold
    assert warm.get("fxgraph_cache_hit", 0) >= 1 and not warm.get("fxgraph_cache_miss"), warm
