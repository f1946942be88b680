"""lmms-eval --model vtp on the shipped scene model and the shipped scene tasks, end to end.

The numbers must equal `vtp eval`'s for the same method and budget: same examples, prompts,
batches and greedy decode (in-process `run_sweep` here)."""
import json

import pytest

from vtp_compile.bench.data import scene_datasets
from vtp_compile.bench.sweep import run_sweep
from vtp_compile.cli.main import main as vtp_main
from vtp_compile.scenes import load_scene_model
from vtp_compile.scenes.tasks import TASKS

from .helpers import lmms_eval_cli, require_lmms_eval, results_file, samples

require_lmms_eval()

N = 4           # examples per task
BATCH = 4
BUDGET = 16
RUNS = {"none": "method=none,inner_backend=eager,threads=2",
        "fastv": f"method=fastv,budget={BUDGET},inner_backend=eager,threads=2"}


@pytest.fixture(scope="module")
def lmms_runs(tmp_path_factory):
    """One lmms-eval CLI run per configuration on all five scene tasks (shared by the tests)."""
    root = tmp_path_factory.mktemp("lmms")
    outs = {}
    for name, margs in RUNS.items():
        out = root / name
        proc = lmms_eval_cli(root, margs, "vtp_scenes", out, "--log_samples", limit=N,
                             batch_size=BATCH)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outs[name] = (out, proc)
    return outs


@pytest.fixture(scope="module")
def vtp_eval_result():
    model, processor = load_scene_model()
    datasets = scene_datasets(list(TASKS), N)
    return run_sweep(model, processor, datasets, ["none", "fastv:inner_backend=eager"], [BUDGET],
                     compile_unpruned=False, batch_size=BATCH, max_new_tokens=8,
                     keep_predictions=True, progress=False)


def _answer(sample: dict) -> str:
    r = sample["filtered_resps"]
    return r if isinstance(r, str) else r[0]


def test_scores_and_answers_equal_vtp_eval(lmms_runs, vtp_eval_result):
    for name, ref in (("none", vtp_eval_result["baseline"]), ("fastv", vtp_eval_result["runs"][0])):
        out, _ = lmms_runs[name]
        res = results_file(out)["results"]
        for task in TASKS:
            got = [_answer(s) for s in sorted(samples(out, f"vtp_scenes_{task}"),
                                                           key=lambda s: s["doc_id"])]
            assert got == ref["predictions"][task], (name, task)
            assert res[f"vtp_scenes_{task}"]["exact_match,none"] == pytest.approx(
                ref["accuracy"][task], abs=1e-12), (name, task)
    # the pruned run differs from the unpruned one somewhere (the comparison can fail)
    assert vtp_eval_result["runs"][0]["predictions"] != vtp_eval_result["baseline"]["predictions"]


def test_pruning_is_recorded_in_log_and_results(lmms_runs):
    out, proc = lmms_runs["fastv"]
    thr = results_file(out)["throughput"]
    assert thr["avg_vtp_pruned_graphs"] >= 1 and thr["avg_vtp_unpruned_graphs"] == 0
    assert f"visual tokens 196 -> {BUDGET}" in proc.stdout + proc.stderr
    assert "warm-up call failed" not in proc.stdout + proc.stderr
    out, proc = lmms_runs["none"]
    assert results_file(out)["throughput"]["avg_vtp_graphs"] == 0


def test_table_from_lmms_eval_outputs_equals_vtp_eval(lmms_runs, vtp_eval_result, tmp_path, capsys):
    root = lmms_runs["none"][0].parent
    table_json, plot = tmp_path / "t.json", tmp_path / "acc.png"
    assert vtp_main(["lmms-table", str(root), "--out", str(table_json), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    (table,) = json.loads(table_json.read_text())
    (run,) = table["runs"]
    ref = vtp_eval_result["runs"][0]
    assert run["method"] == "fastv" and run["budget"] == BUDGET
    assert table["tasks"] == [f"vtp_scenes_{t}" for t in TASKS]
    for t in TASKS:
        assert run["retention"][f"vtp_scenes_{t}"] == ref["retention"][t]
    assert run["mean_accuracy"] == pytest.approx(ref["mean_accuracy"])
    assert plot.stat().st_size > 0 and "none (eager)" in text and "fastv" in text
