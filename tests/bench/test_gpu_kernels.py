"""benchmarks/gpu_kernels.py runs end to end in Triton's interpreter (every Triton op against its
reference), so the script a GPU session runs cannot rot; it fails when a kernel disagrees."""
import json
import os

import pytest

from . import load_script

pytest.importorskip("triton")


def test_every_triton_op_agrees_with_its_reference(tmp_path, monkeypatch):
    import torch

    from vtp_compile.kernels import lowering
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the interpreter check (a GPU runs the script itself)")
    out = tmp_path / "k.json"
    bench = load_script("gpu_kernels")
    assert bench.main(["--tiny", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["op"] for r in rows} == set(lowering.TRITON) and all(r["agrees"] for r in rows)

    real = bench._kernels
    monkeypatch.setattr(bench, "_kernels", lambda name: (real(name)[0], lambda *a: real(name)[0](*a) + 1))
    assert bench.main(["--tiny", "--ops", "fastvid_targets"]) == 1      # a wrong kernel fails
