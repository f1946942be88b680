"""benchmarks/compile_time.py runs end to end on a tiny model, so the script cannot rot."""
import json

import pytest

from . import load_script

# a benchmark smoke test (~90 s on 2 cores): the extended tier keeps it out of CI's time budget
pytestmark = [pytest.mark.inductor, pytest.mark.slow, pytest.mark.extended]


def test_compile_time_tiny_runs(tmp_path, capsys):
    out = tmp_path / "ct.json"
    bench = load_script("compile_time")
    assert bench.main(["--hidden", "64", "--intermediate", "96", "--layers", "2", "--heads", "4",
                       "--image-size", "64", "--budget", "4", "--layer", "1", "--text", "3",
                       "--rounds", "1", "--no-warmup", "--breakdown", "--json", str(out),
                       "--kernels", str(tmp_path / "kernels"), "--by-hand"]) == 0
    table = capsys.readouterr().out
    data = json.loads(out.read_text())
    s = data["summary"]
    assert set(s) == {"inductor", "fastv", "fastv-by-hand"}
    assert s["inductor"]["ratio"] == 1.0 and s["fastv"]["compile_s"] > 0
    for row in data["rows"]:
        assert row["graphs_first"] >= 1 and row["kernels"] >= 1
        assert set(row["phases_s"]) >= {"dynamo", "aot", "inductor_python", "cxx_compile_and_load"}
    assert data["rows"][1]["phases_s"]["vtp_passes"] > 0
    # one row: the compacted width is static (kernels/select.py: static_width), so no kernel
    # takes it as an argument; the layers after the site are a second set of kernels, as in the
    # FastV written by hand
    assert s["inductor"]["kernels_symbolic"] == s["fastv"]["kernels_symbolic"] == 0
    assert s["fastv-by-hand"]["kernels"] > s["inductor"]["kernels"]
    for label in ("inductor", "fastv"):
        assert len(list((tmp_path / "kernels" / label).glob("k*.cpp"))) == s[label]["kernels"]
    # no more graphs for other prompt lengths than Inductor alone compiles
    assert s["fastv"]["graphs_new_lengths"] <= s["inductor"]["graphs_new_lengths"]
    assert "ratio to inductor" in table and "fastv +0" in table
