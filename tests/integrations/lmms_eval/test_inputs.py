"""Prompts and processor inputs from lmms-eval requests."""
import numpy as np
import pytest
from PIL import Image

from vtp_compile.bench.evaluate import build_prompt as vtp_eval_prompt
from vtp_compile.bench.evaluate import prepare_processor
from vtp_compile.integrations.lmms_eval.inputs import build_inputs, build_prompt, split_visuals
from vtp_compile.scenes import SCENE_MODEL_PATH, make_dataset


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoProcessor
    return prepare_processor(AutoProcessor.from_pretrained(SCENE_MODEL_PATH, local_files_only=True))


def test_one_image_prompt_is_vtp_evals(processor):
    q = "how many red shapes ?"
    assert build_prompt(processor, q, 1) == vtp_eval_prompt(processor, q) == "<image> how many red shapes ?"
    assert build_prompt(processor, q, 2) == "<image> <image> how many red shapes ?"
    assert build_prompt(processor, q, 1, template="Q: {question} {image}") == "Q: how many red shapes ? <image>"


def test_chat_template_gets_one_entry_per_visual(processor, monkeypatch):
    monkeypatch.setattr(processor, "chat_template",
                        "{% for m in messages %}[{{ m.role }}]{% for c in m.content %}"
                        "{% if c.type == 'text' %}{{ c.text }}{% else %}<{{ c.type }}>{% endif %}"
                        "{% endfor %}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
                        raising=False)
    got = build_prompt(processor, "<image>\nwhat is it ?", 2, 1, system_prompt="be brief")
    assert got == "[system]be brief[user]<image><image><video>what is it ?[assistant]"


def test_batch_inputs_are_left_padded(processor, tmp_path):
    exs = make_dataset("relations", 2)
    path = tmp_path / "x.png"
    exs[1].image.save(path)
    inputs = build_inputs(processor, ["what is left of the red circle ?", "q ?"],
                          [[exs[0].image], [str(path)]])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert inputs["pixel_values"].shape[0] == 2 and ids.shape[0] == 2
    assert mask[1, 0] == 0 and mask[1, -1] == 1 and mask[0].all()   # the shorter row: left pad
    # an image file is the same pixels as the image it was saved from
    (img,), _ = split_visuals([str(path)], 8)
    assert np.array_equal(np.asarray(img), np.asarray(exs[1].image))


def test_unsupported_visual_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported visual dict .*images and video files"):
        split_visuals([{"array": [0.0], "sampling_rate": 16000}], 8)


def test_video_frames_are_sampled_uniformly(tmp_path):
    av = pytest.importorskip("av")
    pytest.importorskip("lmms_eval")
    path = tmp_path / "v.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(20):
            frame = np.full((32, 32, 3), i * 12, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    images, (video,) = split_visuals([str(path)], 5)
    assert images == [] and video.shape == (5, 32, 32, 3) and video.dtype == np.uint8
    levels = video.reshape(5, -1).mean(1)
    assert np.all(np.diff(levels) > 0)          # increasing frame content: uniform, in order

    seen = {}

    class Recorder:
        image_token, video_token, chat_template = "<image>", "<video>", None
        video_processor = object()       # takes videos= itself

        def __call__(self, **kw):
            seen.update(kw)
            return kw
    build_inputs(Recorder(), ["what happens ?"], [[str(path)]], max_frames=4)
    assert seen["text"] == ["<video> what happens ?"] and seen["videos"][0].shape[0] == 4
    assert "images" not in seen


def test_video_without_video_processor_goes_in_as_labelled_frames(processor):
    """The scene model's LlavaProcessor has no video processor: frames become images, each
    after a 'frame N' label (vtp eval's clip prompt), one visual-token run per frame."""
    from vtp_compile.bench.evaluate import build_clip_prompt
    frames = np.stack([np.full((112, 112, 3), 40 * i, dtype=np.uint8) for i in range(3)])
    assert build_prompt(processor, "what moved left ?", 0, 1, frames=[3]) == build_clip_prompt(
        processor, "what moved left ?", 3) == (
        "frame 1 <image> frame 2 <image> frame 3 <image> what moved left ?")
    seen = {}

    class Recorder:
        image_token, chat_template = "<image>", None

        def __call__(self, **kw):
            seen.update(kw)
            return kw
    from vtp_compile.integrations.lmms_eval import inputs as mod
    orig = mod.split_visuals
    try:
        mod.split_visuals = lambda vis, n: ([], [frames])
        build_inputs(Recorder(), ["what moved left ?"], [["clip.mkv"]])
    finally:
        mod.split_visuals = orig
    assert "videos" not in seen and len(seen["images"]) == 3
    assert np.array_equal(np.asarray(seen["images"][2]), frames[2])
    assert seen["text"] == ["frame 1 <image> frame 2 <image> frame 3 <image> what moved left ?"]
    with pytest.raises(ValueError, match="frames lists"):
        build_prompt(processor, "q", 0, 2, frames=[3])
