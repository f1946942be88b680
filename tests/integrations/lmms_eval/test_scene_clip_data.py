"""The shipped clip-task data, the clip videos and the frames the model gets from them."""
import importlib.util
import json

import numpy as np
import pytest

from vtp_compile.integrations.lmms_eval import CLIP_TASK_DIR
from vtp_compile.integrations.lmms_eval.scene_data import CLIP_DATA_DIR, SHIPPED_N, records, write
from vtp_compile.scenes.clip_tasks import CLIP_TASK_NAMES, make_clip_dataset


def _utils():
    spec = importlib.util.spec_from_file_location("vtp_scene_clip_utils", CLIP_TASK_DIR / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shipped_clip_files_equal_the_generator(tmp_path):
    write(tmp_path, tasks=list(CLIP_TASK_NAMES))
    for task in CLIP_TASK_NAMES:
        shipped = (CLIP_DATA_DIR / f"{task}.jsonl").read_text()
        assert shipped == (tmp_path / f"{task}.jsonl").read_text(), task
        assert len(shipped.splitlines()) == SHIPPED_N
        name = task.replace("clip_", "")
        assert f"data/{task}.jsonl" in (CLIP_TASK_DIR / f"vtp_scene_clips_{name}.yaml").read_text()


def test_video_frames_are_vtp_evals_frames(tmp_path, monkeypatch):
    """doc_to_visual's video, sampled as the model wrapper samples it, is the generator's clip
    pixel for pixel (lossless H.264 RGB), with vtp eval's frame-labelled prompt."""
    pytest.importorskip("av")
    pytest.importorskip("lmms_eval")
    from vtp_compile.bench.evaluate import build_clip_prompt, prepare_processor
    from vtp_compile.integrations.lmms_eval.inputs import build_inputs, split_visuals
    from vtp_compile.scenes import SCENE_MODEL_PATH
    from transformers import AutoProcessor

    monkeypatch.setenv("VTP_SCENE_CLIP_CACHE", str(tmp_path))
    utils = _utils()
    proc = prepare_processor(AutoProcessor.from_pretrained(SCENE_MODEL_PATH, local_files_only=True))
    for task in CLIP_TASK_NAMES:
        (ex,) = make_clip_dataset(task, 1)
        (rec,) = records(task, 1)
        assert (rec["question"], rec["answer"], rec["seed"], rec["frames"]) == (
            ex.question, ex.answer, ex.seed, 4)
        (path,) = utils.doc_to_visual(json.loads(json.dumps(rec)))
        assert path.startswith(str(tmp_path)) and path.endswith(".mp4")
        _, (video,) = split_visuals([path], 32)
        assert video.shape == (4, 112, 112, 3)
        for got, want in zip(video, ex.frames):
            assert np.array_equal(got, np.asarray(want))
        got = build_inputs(proc, [utils.doc_to_text(rec)], [[path]], max_frames=32)
        want = proc(images=ex.frames, text=[build_clip_prompt(proc, ex.question, 4)],
                    return_tensors="pt", padding=True)
        assert got["input_ids"].tolist() == want["input_ids"].tolist()
        assert (got["pixel_values"] == want["pixel_values"]).all()
    # fewer frames asked for than the clip has: uniform sampling, labels renumbered
    _, (two,) = split_visuals([path], 2)
    assert len(two) == 2


def test_mkv_videos_are_sampled_to_max_frames_too(tmp_path):
    """lmms-eval 0.7.3's read_video returns every frame of a Matroska file; read_frames
    samples them uniformly down to max_frames all the same."""
    av = pytest.importorskip("av")
    pytest.importorskip("lmms_eval")
    from vtp_compile.integrations.lmms_eval.inputs import read_frames
    path = tmp_path / "v.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "bgr0"
        for i in range(6):
            frame = np.full((16, 16, 3), 40 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    assert [int(f[0, 0, 0]) for f in read_frames(str(path), 3)] == [0, 80, 200]  # indices 0, 2, 5 (read_video's own rule)
    assert len(read_frames(str(path), 8)) == 6
