"""benchmarks/gpu_kernels.py runs end to end in Triton's interpreter (every Triton op against its
reference), so the script a GPU session runs cannot rot; it fails when a kernel disagrees."""
import importlib.util
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_kernels.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_kernels_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_triton_op_agrees_with_its_reference(tmp_path, monkeypatch):
    import torch

    from vtp_compile.kernels import lowering
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the interpreter check (a GPU runs the script itself)")
    out = tmp_path / "k.json"
    bench = _load()
    assert bench.main(["--tiny", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["op"] for r in rows} == set(lowering.TRITON) and all(r["agrees"] for r in rows)

    real = bench._kernels
    monkeypatch.setattr(bench, "_kernels", lambda name: (real(name)[0], lambda *a: real(name)[0](*a) + 1))
    assert bench.main(["--tiny", "--ops", "fastvid_targets"]) == 1      # a wrong kernel fails
