"""Method options on the command line: ``name:key=value,...`` or JSON, labels in the results
and the plot, bad options rejected before anything loads."""
import json

import pytest
from PIL import Image

from vtp_compile.bench import sweep
from vtp_compile.bench.compile import parse_method_spec, parse_methods, prune_options
from vtp_compile.bench.evaluate import TaskScore
from vtp_compile.cli.main import main


def test_option_lists_parse_to_labels_and_options():
    labels = parse_methods("none,fastv,dstp:reserve=64,tau=0.1,pdrop:layers=[1,2,3],sparsevlm:recycle=true")
    assert labels == ["none", "fastv", "dstp:reserve=64,tau=0.1", "pdrop:layers=[1,2,3]",
                      "sparsevlm:recycle=true"]
    assert prune_options(labels[2], 12) == {"method": "dstp", "reserve": 64, "tau": 0.1, "budget": 12}
    assert prune_options(labels[3], 0.25) == {"method": "pdrop", "layers": [1, 2, 3], "ratio": 0.25}
    assert prune_options(labels[4], 8)["recycle"] is True


def test_json_specs_and_chains():
    labels = parse_methods('["fastv", {"method": "dstp", "base": "pdrop", "base_options": {"layers": [1]}}]')
    assert labels[1] == 'dstp:base=pdrop,base_options={"layers":[1]}'
    assert parse_method_spec(labels[1]) == ("dstp", {"base": "pdrop", "base_options": {"layers": [1]}})
    chain = '{"method": "chain", "stages": [{"method": "divprune", "budget": 64}, {"method": "fastv", "budget": 16}]}'
    (label,) = parse_methods(chain)
    # a chain's stages carry their budgets: the sweep's budget is not added
    assert prune_options(label, 12) == json.loads(chain)


@pytest.mark.parametrize("spec, match", [("magic:x=1", "unknown method"), ("dstp:reserve", "key=value"),
                                         ("fastv:budget=3", "budgets come from"), ("{bad json", "JSON")])
def test_bad_specs_are_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_methods(spec)


def test_bad_option_values_fail_before_loading(capsys):
    assert main(["eval", "--methods", "dstp:tau=3", "--model", "/nonexistent/ckpt"]) == 2
    assert "'tau' must be a number" in capsys.readouterr().err


def test_sweep_records_and_plots_each_run_with_its_options(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(sweep, "compiled_copy", lambda m, method, budget, **kw: seen.append((method, budget)))
    monkeypatch.setattr(sweep, "evaluate_model", lambda *a, **k: {"t": TaskScore("t", 1, 2)})
    methods = parse_methods("none,dstp:reserve=4,dstp:reserve=4,reserve_by=score")
    result = sweep.run_sweep(None, None, {"t": []}, methods, [4, 8])
    runs = result["runs"]
    assert [(r["method"], r["budget"]) for r in runs] == [
        ("dstp:reserve=4", 4), ("dstp:reserve=4", 8), ("dstp:reserve=4,reserve_by=score", 4),
        ("dstp:reserve=4,reserve_by=score", 8)]
    assert runs[2]["method_name"] == "dstp" and runs[2]["options"] == {"reserve": 4, "reserve_by": "score"}
    from vtp_compile.bench.plot import plot_accuracy
    assert Image.open(plot_accuracy(result, tmp_path / "p.png")).format == "PNG"
    assert "dstp:reserve=4,reserve_by=score" in sweep.format_table(result)
