"""vtp lmms-table on lmms-eval results files (written here in lmms-eval 0.7's layout)."""
import json

import pytest

from vtp_compile.cli.main import main as vtp_main
from vtp_compile.integrations.lmms_eval.results import build_tables, pick_metric, render


def _write(root, name, model_args, results, limit=None, throughput=None, date="1", model="vtp"):
    path = root / "ckpt" / f"{name}_results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"results": results, "groups": {}, "config": {"model": model, "model_args": model_args,
            "limit": limit}, "date": date}
    if throughput:
        data["throughput"] = throughput
    path.write_text(json.dumps(data))
    return path


def _mme(perc, cog):
    return {"alias": "mme", "mme_perception_score,none": perc, "mme_perception_score_stderr,none": "N/A",
            "mme_cognition_score,none": cog}


def test_retention_per_task_and_mean(tmp_path):
    _write(tmp_path, "a", "pretrained=/m,method=none", {"mme": _mme(1500.0, 300.0),
           "pope": {"pope_accuracy,none": 0.8}}, date="1")
    _write(tmp_path, "b", "pretrained=/m,method=fastv,budget=64,layer=3", {"mme": _mme(1200.0, 290.0),
           "pope": {"pope_accuracy,none": 0.6}}, throughput={"avg_vtp_unpruned_graphs": 2.0,
                                                             "avg_vtp_pruned_graphs": 3.0}, date="2")
    _write(tmp_path, "c", "pretrained=/m,method=divprune+fastv,stage1.ratio=0.5,stage2.budget=16",
           {"mme": _mme(1000.0, 250.0), "pope": {"pope_accuracy,none": 0.4}},
           throughput={"avg_vtp_unpruned_graphs": 0.0, "avg_vtp_pruned_graphs": 0.0}, date="3")
    _write(tmp_path, "d", "pretrained=/m,method=none", {"x": {"acc,none": 1.0}}, model="llava_hf")
    (table,) = build_tables([tmp_path])
    assert table["tasks"] == ["mme", "pope"] and table["metric"]["mme"] == "mme_perception_score"
    fastv = next(r for r in table["runs"] if r["method"] == "fastv:layer=3")
    assert fastv["budget"] == 64 and fastv["retention"] == {"mme": 80.0, "pope": 75.0}
    assert fastv["mean_retention"] == pytest.approx(100 * (1200 + 0.6) / (1500 + 0.8))
    chain = next(r for r in table["runs"] if r["method"].startswith("chain"))
    assert chain["budget"] is None
    text = render([table])
    assert "fastv:layer=3@64: vtp left 2 graph(s) unpruned" in text
    assert "pruned no graph" in text and "chain:stages=" in text
    (table,) = build_tables([tmp_path], metric="mme_cognition_score")
    assert table["baseline"]["accuracy"]["mme"] == 300.0 and table["metric"]["pope"] == "pope_accuracy"
    with pytest.raises(ValueError, match="no task reports metric 'f1'"):
        build_tables([tmp_path], metric="f1")


def test_errors_name_what_is_missing(tmp_path):
    _write(tmp_path, "b", "pretrained=/m,method=fastv,budget=64", {"pope": {"pope_accuracy,none": 0.6}})
    with pytest.raises(ValueError, match="no baseline run \\(method=none\\) for /m"):
        build_tables([tmp_path])
    _write(tmp_path, "a", "pretrained=/m,method=none", {"pope": {"pope_accuracy,none": 0.8}}, limit=10)
    with pytest.raises(ValueError, match="--limit None differs from the baseline's \\(10\\)"):
        build_tables([tmp_path])
    with pytest.raises(ValueError, match="metric 'f1' not in this task's results"):
        pick_metric({"pope_accuracy,none": 0.8}, "f1")
    with pytest.raises(FileNotFoundError):
        build_tables([tmp_path / "nope"])


def test_cli_writes_table_and_plot_for_scores_above_one(tmp_path, capsys):
    _write(tmp_path, "a", "pretrained=/m,method=none", {"mme": _mme(1500.0, 300.0)}, date="1")
    _write(tmp_path, "b", "pretrained=/m,method=fastv,ratio=0.25", {"mme": _mme(1400.0, 300.0)}, date="2")
    out, plot = tmp_path / "t.json", tmp_path / "p.png"
    assert vtp_main(["lmms-table", str(tmp_path), "--out", str(out), "--plot", str(plot)]) == 0
    assert "1400.000 (93%)" in capsys.readouterr().out and plot.stat().st_size > 0
    assert vtp_main(["lmms-table", str(tmp_path / "ckpt" / "b_results.json")]) == 2   # no baseline
    assert "no baseline run" in capsys.readouterr().err
