"""lmms-eval --model vtp on video: the shipped scene model and the shipped clip tasks.

Each doc is a clip handed over as a video file; the wrapper samples its frames and, since the
scene model's processor has no video processor, gives them to the model as images after
`frame N` labels. Answers and scores must equal `vtp eval --tasks clips`'s for the same
method, budget and batches (in-process `run_sweep` here)."""
import pytest

from vtp_compile.bench.data import scene_datasets
from vtp_compile.bench.sweep import run_sweep
from vtp_compile.scenes import load_scene_model
from vtp_compile.scenes.clip_tasks import CLIP_TASK_NAMES

from .helpers import lmms_eval_cli, require_lmms_eval, results_file, samples

require_lmms_eval()

N = 4            # clips per task
BATCH = 4
BUDGET = 49      # of 4 x 196 = 784 visual tokens per clip (6.25 %)


@pytest.fixture(scope="module")
def lmms_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms_clips")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VTP_SCENE_CLIP_CACHE", str(root / "videos"))
        proc = lmms_eval_cli(root, f"method=fastv,budget={BUDGET},inner_backend=eager,threads=2",
                             "vtp_scene_clips", root / "out", "--log_samples", limit=N,
                             batch_size=BATCH)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list((root / "videos").rglob("*.mp4"))) == N * len(CLIP_TASK_NAMES)
    return root / "out", proc


@pytest.fixture(scope="module")
def vtp_eval_result():
    model, processor = load_scene_model()
    return run_sweep(model, processor, scene_datasets(list(CLIP_TASK_NAMES), N),
                     ["none", "fastv:inner_backend=eager"], [BUDGET], compile_unpruned=False,
                     batch_size=BATCH, max_new_tokens=8, keep_predictions=True, progress=False)


def test_clip_answers_and_scores_equal_vtp_eval(lmms_run, vtp_eval_result):
    out, proc = lmms_run
    ref = vtp_eval_result["runs"][0]
    res = results_file(out)["results"]
    for task in CLIP_TASK_NAMES:
        name = "vtp_scene_clips_" + task.replace("clip_", "")
        got = [s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0]
               for s in sorted(samples(out, name), key=lambda s: s["doc_id"])]
        assert got == ref["predictions"][task], task
        assert res[name]["exact_match,none"] == pytest.approx(ref["accuracy"][task], abs=1e-12)
    # the whole clip's visual tokens were pruned to the budget, and pruning changed answers
    assert f"visual tokens {4 * 196} -> {BUDGET}" in proc.stdout + proc.stderr
    assert results_file(out)["throughput"]["avg_vtp_unpruned_graphs"] == 0
    assert ref["predictions"] != vtp_eval_result["baseline"]["predictions"]
