"""The video methods (``vidcom2``, ``dycoke``, ``fastvid``) and ``per_frame`` on Qwen clips in
vLLM: kept indices equal vtp's transformers path (``explain`` on transformers' Qwen-VL, frames
from its M-RoPE positions), and greedy tokens and log-probabilities equal transformers with that
selection (FastVID: with its merged features) at the same M-RoPE positions
(tests/serving/vllm/qwen_support.py). The selection's own checks against the loop oracles:
test_selection.py."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from vtp_compile.serving.vllm import options
from vtp_compile.serving.vllm.selection import select_image
from vtp_compile.testing.vllm_qwen import IMAGE, VIDEO

from .qwen_support import assert_same, greedy_lp, qrequest
from .support import examples
from .test_qwen import _clip

pytestmark = [pytest.mark.vllm, pytest.mark.inductor]
TOKENS = 4
VIDEO_CASES = [
    {"method": "vidcom2", "budget": 20},
    {"method": "vidcom2", "ratio": 0.3, "per_frame": "even", "min_per_frame": 2},
    {"method": "dycoke", "budget": 18},
    {"method": "fastvid", "budget": 16, "cuts": 1, "anchor_every": 2},
    {"method": "random", "ratio": 0.25, "per_frame": "even", "min_per_frame": 3},
]


def _frames(tq, clip) -> torch.Tensor:
    """Each of the clip's tokens' frame from its grid: token ``j`` of ``(t, h, w)`` patches is in
    frame ``j // (h * w / merge^2)``."""
    t, h, w = (int(v) for v in tq.hf_inputs(VIDEO, [clip], video=True)["video_grid_thw"][0])
    m = tq.model.config.vision_config.spatial_merge_size
    return torch.arange(t).repeat_interleave(h * w // (m * m))


def _select(tq, item, opts, video):
    """``(kept indices, kept features)`` of the plugin's selection on transformers' features."""
    feats = tq.features([item], video)[0]
    return select_image(options.parse(opts), feats, temporal=_frames(tq, item) if video else None)


def _check(tq, out, prompt, item, opts, video):
    """vLLM's output equals transformers with the selection whose indices ``explain`` gives."""
    kept = tq.explain_kept(prompt, item, opts, video=video)
    sel = _select(tq, item, opts, video)
    assert sel[0].tolist() == kept, (opts, sel[0].tolist(), kept)
    assert_same(out, tq.reference(prompt, [item], [sel], TOKENS, video=video))
    return kept


def test_support_table_lists_the_video_methods():
    from vtp_compile.serving.vllm.support import CHECKED, REFUSED, VIDEO
    assert {o["method"] for o in VIDEO_CASES} >= set(VIDEO)
    for fam in ("qwen2_5_vl", "qwen2_vl", "llava_onevision"):
        assert set(VIDEO) <= set(CHECKED[fam])
    for fam in ("llava", "llava_next"):
        assert set(VIDEO) <= set(REFUSED[fam])


@pytest.mark.parametrize("opts", VIDEO_CASES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_clip_kept_indices_and_tokens(engine_qwen, tiny_qwen, record, opts):
    """A 6-frame 96 x 96 clip: 3 x 6 x 6 = 108 tokens in 3 frames (t positions 0, 2, 4)."""
    clip = _clip(0, 6, (96, 96))
    prompt = VIDEO + " " + examples(1)[0].question
    out = engine_qwen.generate([qrequest(prompt, [clip], opts, video=True)], greedy_lp(TOKENS))[0]
    rec = record()
    assert len(rec) == 1 and rec[0]["visual"] == 108
    k = options.parse(opts).n_keep(108)
    assert sum(t == tiny_qwen.video_token for t in out.prompt_token_ids) == k
    assert rec[0]["kept"] == _check(tiny_qwen, out, prompt, clip, opts, True)
    assert len(rec[0]["kept"]) == k


def test_batch_of_clips_and_an_image(engine_qwen, tiny_qwen, record):
    """Clips of 2, 4 and 6 frames at four grid sizes (18 to 98 tokens, 1 to 3 temporal
    frames), each with a video method or ``per_frame``, an unpruned clip and an image (one frame)
    with VidCom2, in one generate call with 64-token prefill chunks: each equals the transformers
    path. (Qwen2.5-VL clips of 4 temporal frames, and 6 frames of 64 x 64, differ between vLLM
    and transformers by ~0.01 in log-probability without the plugin too: 8 frames are checked on
    Qwen2-VL below.)"""
    q = examples(3)[2].question
    clips = [_clip(1, 4, (64, 96)), _clip(2, 6, (64, 96)), _clip(3, 2, (96, 96)), _clip(4, 4, (112, 112)),
             _clip(5, 4, (48, 48))]
    img = examples(4)[1].image.resize((96, 64))
    cases = [(VIDEO + " " + q, clips[0], {"method": "fastvid", "ratio": 0.4, "cuts": 1, "anchor_every": 1}, True),
             (VIDEO + " " + q, clips[1], {"method": "dycoke", "ratio": 0.3, "min_per_frame": 2}, True),
             (q + " " + VIDEO, clips[2], {"method": "vidcom2", "budget": 12}, True),
             (VIDEO + " " + q, clips[3], {"method": "random", "budget": 10, "per_frame": "even"}, True),
             (VIDEO + " " + q, clips[4], {"method": "vidcom2", "ratio": 0.5, "per_frame": "even", "min_per_frame": 3}, True),
             (VIDEO + " " + q, clips[0], None, True),
             (IMAGE + " " + q, img, {"method": "vidcom2", "budget": 9}, False)]
    outs = engine_qwen.generate([qrequest(p, [c], o, video=v) for p, c, o, v in cases], greedy_lp(TOKENS))
    rec = record()
    want = Counter()
    for (prompt, item, opts, video), out in zip(cases, outs):
        if opts is None:
            assert_same(out, tiny_qwen.reference(prompt, [item], [None], TOKENS, video=video))
            continue
        kept = _check(tiny_qwen, out, prompt, item, opts, video)
        want[json.dumps([opts["method"], kept])] += 1
    assert Counter(json.dumps([r["options"]["method"], r["kept"]]) for r in rec) == want


def test_qwen2_vl_clips(engine_qwen2, tiny_qwen2, record):
    """Qwen2-VL (t positions unscaled): clips of 4, 6 and 8 frames with the video methods in
    one batch."""
    q = examples(2)[1].question
    cases = [(VIDEO + " " + q, _clip(3, 4, (64, 96)), {"method": "fastvid", "budget": 14, "cuts": 1}),
             (VIDEO + " " + q, _clip(5, 8, (48, 96)), {"method": "vidcom2", "ratio": 0.4}),
             (VIDEO + " " + q, _clip(1, 8, (64, 96)), {"method": "dycoke", "budget": 30, "min_per_frame": 2}),
             (q + " " + VIDEO, _clip(6, 6, (64, 96)), {"method": "fastvid", "ratio": 0.3, "anchor_every": 1})]
    outs = engine_qwen2.generate([qrequest(p, [c], o, video=True) for p, c, o in cases], greedy_lp(TOKENS))
    record()
    for (prompt, clip, opts), out in zip(cases, outs):
        _check(tiny_qwen2, out, prompt, clip, opts, True)


def test_bad_frame_options_name_the_choices(engine_qwen):
    clip = _clip(0, 4, (64, 64))
    for opts, match in (({"method": "vidcom2", "per_frame": "some"}, "per_frame"),
                        ({"method": "dycoke", "per_frame": "even"}, "per_frame"),
                        ({"method": "fastvid", "min_per_frame": -1}, "min_per_frame")):
        with pytest.raises(ValueError, match=match):
            engine_qwen.generate([qrequest(VIDEO, [clip], opts, video=True)], greedy_lp(1))
