"""lmms-eval --model vtp on clips through a model's own video processor, end to end.

A tiny random-weight Qwen2-VL (and Qwen2.5-VL) saved with ``save_pretrained`` (no download:
:mod:`.tiny_qwen`), the real ``lmms-eval`` command on the shipped clip group
``vtp_scene_clips`` (``--limit 2 --batch_size 2``: two batches of two clips per task). The
processor has a ``Qwen2VLVideoProcessor``, so the wrapper hands each clip over as ``videos=``
(``pixel_values_videos``, ``video_grid_thw``), not as labelled frames (the scene model's path,
test_end_to_end.py). Accuracy of a random model means nothing and is not checked; what is:
the runs complete, every clip reached the model through its video path, and vtp pruned every
clip to the budget (``method=none``: nothing). Needs torchvision (the video processor imports
it): ``make lmms-eval-env`` installs it with the CPU shim.
"""
import json
import os
import re

import pytest

from vtp_compile.integrations.lmms_eval.scene_video import FPS

from .helpers import lmms_eval_cli, require_lmms_eval, results_file
from .tiny_qwen import save_tiny_qwen

require_lmms_eval()
if os.environ.get("VTP_LMMS_REQUIRED"):
    import torchvision  # noqa: F401  (make lmms-eval-env installs it: a failure, not a skip)
else:
    pytest.importorskip("torchvision", reason="torchvision not installed (make test-lmms-eval)")

LIMIT = 2
BATCH = 2
BUDGET = 24          # of the 98 visual tokens of a 4-frame clip (2 temporal patches x 49)
GROUP = "vtp_scene_clips"
CLIP_TASKS = ("vtp_scene_clips_order", "vtp_scene_clips_counting", "vtp_scene_clips_grounding")
COMMON = "inner_backend=eager,threads=2"
RUNS = {   # name -> (family, model_args)
    "none": ("qwen2_vl", "method=none"),
    "vidcom2": ("qwen2_vl", f"method=vidcom2,budget={BUDGET}"),
    "fastv_even": ("qwen2_vl", f"method=fastv,budget={BUDGET},layer=1,per_frame=even"),
    "qwen2_5_vidcom2": ("qwen2_5_vl", f"method=vidcom2,budget={BUDGET}"),
}
SITE = re.compile(r"visual tokens (\d+) -> (\d+)")


@pytest.fixture(scope="module")
def clip_runs(tmp_path_factory):
    """``(checkpoints, video folder, runs)``: one lmms-eval CLI run per entry of RUNS."""
    root = tmp_path_factory.mktemp("lmms_qwen")
    ckpts = {f: save_tiny_qwen(root / f, f) for f in dict.fromkeys(f for f, _ in RUNS.values())}
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VTP_SCENE_CLIP_CACHE", str(root / "videos"))
        for name, (family, margs) in RUNS.items():
            out, report = root / "runs" / name, root / "reports" / f"{name}.json"
            proc = lmms_eval_cli(root, f"{margs},{COMMON},report={report}", GROUP, out,
                                 limit=LIMIT, batch_size=BATCH, pretrained=ckpts[family])
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            runs[name] = {"family": family, "log": proc.stdout + proc.stderr,
                          "report": json.loads(report.read_text()), "results": results_file(out)}
    videos = sorted((root / "videos").rglob("*.mp4"))
    assert len(videos) == LIMIT * len(CLIP_TASKS)
    return ckpts, videos, runs


@pytest.fixture(scope="module")
def video_tokens(clip_runs):
    """family -> the visual-token counts of the runs' clips, from the wrapper's own
    ``build_inputs`` with the checkpoint's processor: the clip goes in as ``videos=``."""
    from transformers import AutoProcessor

    from vtp_compile.bench.evaluate import prepare_processor
    from vtp_compile.integrations.lmms_eval.inputs import build_inputs
    ckpts, videos, _ = clip_runs
    out = {}
    for family, path in ckpts.items():
        proc = prepare_processor(AutoProcessor.from_pretrained(path))
        assert type(proc.video_processor).__name__ == "Qwen2VLVideoProcessor"
        video_id = proc.tokenizer.convert_tokens_to_ids(proc.video_token)
        counts = set()
        for video in videos:
            inputs = build_inputs(proc, ["how many shapes ?"], [[str(video)]])
            assert "pixel_values_videos" in inputs and "pixel_values" not in inputs
            (t, h, w), = inputs["video_grid_thw"].tolist()
            assert t == 2            # 4 frames, 2 per temporal patch: all frames, no resampling
            n = int((inputs["input_ids"] == video_id).sum())
            assert n == t * h * w // 4        # 2x2 merge
            if family == "qwen2_5_vl":        # temporal positions at the clip's own frame rate
                assert inputs["second_per_grid_ts"].tolist() == [2 / FPS]
            counts.add(n)
        out[family] = counts
    return out


def test_pruned_runs_prune_every_clip_to_the_budget(clip_runs, video_tokens):
    _, _, runs = clip_runs
    for name, run in runs.items():
        if name == "none":
            continue
        rep, res = run["report"], run["results"]
        assert set(CLIP_TASKS) <= set(res["results"]), name
        assert all(res["n-samples"][t]["effective"] == LIMIT for t in CLIP_TASKS), name
        assert rep["requests"] == LIMIT * len(CLIP_TASKS) and rep["budget"] == BUDGET, name
        # the results JSON records what vtp did (the wrapper's throughput metrics)
        thr = res["throughput"]
        assert thr["avg_vtp_pruned_graphs"] == rep["pruned_graphs"] >= 1, name
        assert thr["avg_vtp_unpruned_graphs"] == rep["unpruned_graphs"] == 0, name
        assert rep["unpruned"] == {}, name
        # every pruned graph saw a whole clip's video tokens and kept the budget
        sites = [tuple(map(int, SITE.search(s).groups())) for s in rep["sites"]]
        assert sites, name
        for visual, kept in sites:
            assert visual in video_tokens[run["family"]] and kept == BUDGET < visual, (name, sites)
        assert all(s in run["log"] for s in rep["sites"]), name
        assert "warm-up call failed" not in run["log"], name
    assert runs["fastv_even"]["report"]["options"]["per_frame"] == "even"
    assert runs["fastv_even"]["report"]["method"].startswith("fastv")
    assert runs["vidcom2"]["report"]["method"] == runs["qwen2_5_vidcom2"]["report"]["method"] == "vidcom2"


def test_method_none_prunes_nothing(clip_runs):
    run = clip_runs[2]["none"]
    rep, res = run["report"], run["results"]
    assert set(CLIP_TASKS) <= set(res["results"])
    assert rep["method"] == "none" and rep["options"] is None
    assert rep["requests"] == LIMIT * len(CLIP_TASKS)
    assert rep["graphs"] == rep["pruned_graphs"] == 0 and rep["sites"] == []
    assert res["throughput"]["avg_vtp_graphs"] == res["throughput"]["avg_vtp_pruned_graphs"] == 0
    assert "visual tokens" not in run["log"]


def test_processor_keeps_the_sampled_frames(clip_runs):
    """The wrapper passes ``do_sample_frames=False`` and each clip's metadata: a video
    processor set to sample frames itself (Qwen3-VL's default) keeps the ``max_frames``
    lmms-eval sampled instead of failing for want of a frame rate."""
    from transformers import AutoProcessor

    from vtp_compile.bench.evaluate import prepare_processor
    from vtp_compile.integrations.lmms_eval.inputs import build_inputs
    ckpts, videos, _ = clip_runs
    proc = prepare_processor(AutoProcessor.from_pretrained(ckpts["qwen2_5_vl"]))
    proc.video_processor.do_sample_frames = True
    inputs = build_inputs(proc, ["q ?", "q ?"], [[str(videos[0])], [str(videos[1])]])
    assert [g[0] for g in inputs["video_grid_thw"].tolist()] == [2, 2]
    assert inputs["second_per_grid_ts"].tolist() == [2 / FPS, 2 / FPS]
