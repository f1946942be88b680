"""lmms-eval --model vtp on the shipped scene model and the shipped scene tasks, end to end:
the image group `vtp_scenes` and the video group `vtp_scene_clips` in one run per configuration.

The numbers must equal `vtp eval`'s for the same method and budget: same examples, prompts,
batches and greedy decode (in-process `run_sweep` here). A clip doc is a video file; the
wrapper samples its frames and, the scene model's processor having no video processor, gives
them to the model as images after `frame N` labels (vtp eval's clip prompt)."""
import json

import pytest

from vtp_compile.bench.data import scene_datasets
from vtp_compile.bench.sweep import run_sweep
from vtp_compile.cli.main import main as vtp_main
from vtp_compile.scenes import load_scene_model
from vtp_compile.scenes.clip_tasks import CLIP_TASK_NAMES
from vtp_compile.scenes.tasks import TASKS

from .helpers import lmms_eval_cli, require_lmms_eval, results_file, samples

require_lmms_eval()

N = 4           # examples per task
BATCH = 4
BUDGET = 16     # of 196 visual tokens per image, of 4 x 196 = 784 per clip
ALL_TASKS = list(TASKS) + list(CLIP_TASK_NAMES)
GROUPS = "vtp_scenes,vtp_scene_clips"


def lmms_task(task: str) -> str:
    """The lmms-eval task name of a scene or clip task."""
    if task in CLIP_TASK_NAMES:
        return "vtp_scene_clips_" + task.replace("clip_", "")
    return f"vtp_scenes_{task}"
RUNS = {"none": "method=none,inner_backend=eager,threads=2",
        "fastv": f"method=fastv,budget={BUDGET},inner_backend=eager,threads=2"}


@pytest.fixture(scope="module")
def lmms_runs(tmp_path_factory):
    """One lmms-eval CLI run per configuration on the five scene tasks and the three clip tasks
    (shared by the tests); the clips' videos go to a folder of their own."""
    root = tmp_path_factory.mktemp("lmms")
    outs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VTP_SCENE_CLIP_CACHE", str(root / "videos"))
        for name, margs in RUNS.items():
            out = root / "runs" / name
            proc = lmms_eval_cli(root, margs, GROUPS, out, "--log_samples", limit=N,
                                 batch_size=BATCH)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            outs[name] = (out, proc)
    assert len(list((root / "videos").rglob("*.mp4"))) == N * len(CLIP_TASK_NAMES)
    return outs


@pytest.fixture(scope="module")
def vtp_eval_result():
    model, processor = load_scene_model()
    datasets = scene_datasets(ALL_TASKS, N)
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
        for task in ALL_TASKS:
            got = [_answer(s) for s in sorted(samples(out, lmms_task(task)),
                                                           key=lambda s: s["doc_id"])]
            assert got == ref["predictions"][task], (name, task)
            assert res[lmms_task(task)]["exact_match,none"] == pytest.approx(
                ref["accuracy"][task], abs=1e-12), (name, task)
    # the pruned run differs from the unpruned one somewhere, on images and on clips (the
    # comparison can fail)
    pruned, unpruned = vtp_eval_result["runs"][0]["predictions"], vtp_eval_result["baseline"]["predictions"]
    for tasks in (TASKS, CLIP_TASK_NAMES):
        assert [pruned[t] for t in tasks] != [unpruned[t] for t in tasks]


def test_pruning_is_recorded_in_log_and_results(lmms_runs):
    out, proc = lmms_runs["fastv"]
    thr = results_file(out)["throughput"]
    assert thr["avg_vtp_pruned_graphs"] >= 1 and thr["avg_vtp_unpruned_graphs"] == 0
    assert f"visual tokens 196 -> {BUDGET}" in proc.stdout + proc.stderr
    assert f"visual tokens {4 * 196} -> {BUDGET}" in proc.stdout + proc.stderr   # a whole clip
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
    assert sorted(table["tasks"]) == sorted(lmms_task(t) for t in ALL_TASKS)
    for t in ALL_TASKS:
        assert run["retention"][lmms_task(t)] == ref["retention"][t]
    assert run["mean_accuracy"] == pytest.approx(ref["mean_accuracy"])
    assert plot.stat().st_size > 0 and "none (eager)" in text and "fastv" in text
