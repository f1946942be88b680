"""vLLM's LLaVA-OneVision (anyres, ``anyres_max_9``) with the plugin: each image's packed features
are the ``V`` visual tokens, as on the transformers path (positions: consecutive, as LLaVA's).
Clips: ``frames * per_frame + 1`` tokens (the newline last); the video methods and ``per_frame``
see the clip's frames, and their kept indices equal ``explain`` on the transformers path (which
reads ``frame_tokens`` from the model's config, as the compiled path does)."""
from __future__ import annotations

import pytest
import torch

from vtp_compile.serving.vllm import options
from vtp_compile.serving.vllm.selection import select_image

from .support import examples, greedy, request

pytestmark = pytest.mark.vllm
TOKENS = 5
SIZES = [(112, 112), (112, 56), (56, 112), (56, 56)]
CASES = [{"method": "divprune", "budget": 12}, {"method": "cdpruner", "budget": 10}]


def _image(i):
    ex = examples(4)[i]
    return ex, ex.image.resize(SIZES[i])


CLIP_CASES = [{"method": "vidcom2", "budget": 14},
              {"method": "dycoke", "ratio": 0.4},
              {"method": "fastvid", "budget": 12, "cuts": 1, "anchor_every": 2},
              {"method": "random", "ratio": 0.3, "per_frame": "even", "min_per_frame": 1}]


def test_support_table_is_what_is_tested():
    from vtp_compile.serving.vllm.support import CHECKED
    assert set(CHECKED["llava_onevision"]) == {o["method"] for o in CASES + CLIP_CASES}


def _clip(first: int, frames: int):
    import numpy as np
    exs = examples(8)
    return np.stack([np.asarray(exs[(first + i) % 8].image.convert("RGB").resize((56, 56)))
                     for i in range(frames)])


def _vrequest(prompt, clip, opts):
    r = {"prompt": prompt, "multi_modal_data": {"video": clip}}
    if opts is not None:
        r["mm_processor_kwargs"] = {"vtp": opts}
    return r


@pytest.mark.parametrize("opts", CLIP_CASES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_clip_kept_indices_and_tokens(engine_ov, tiny_ov, record, opts):
    """A 6-frame clip of 56 px frames: 4 pooled tokens per frame, 6 * 4 + 1 = 25 tokens."""
    import vtp_compile
    clip = _clip(0, 6)
    prompt = "<video> " + examples(1)[0].question
    out = engine_ov.generate([_vrequest(prompt, clip, opts)], greedy(TOKENS))[0]
    rec = record()
    feats = tiny_ov.features(clip, video=True)
    assert rec[0]["visual"] == feats.shape[0] == 25
    inputs = dict(tiny_ov.hf_inputs(prompt, [clip], video=True))
    ex_ = vtp_compile.explain(tiny_ov.model, inputs, opts)
    kept = ex_.sites[0].kept_visual_index[0].tolist()
    assert rec[0]["kept"] == kept
    spec = options.parse(opts)
    frames = torch.arange(7).repeat_interleave(torch.tensor([4] * 6 + [1]))
    idx, sel = select_image(spec, feats, temporal=frames)
    assert idx.tolist() == kept
    ids, ref = tiny_ov.reference(prompt, [sel], TOKENS, video=True)
    assert list(out.prompt_token_ids) == ids
    assert list(out.outputs[0].token_ids) == ref


def test_batch_of_clips_images_and_keep_all(engine_ov, tiny_ov):
    """Clips of 4 and 8 frames and an image in one batch, one clip unpruned, one kept whole."""
    clips = [_clip(0, 4), _clip(3, 8), _clip(5, 4)]
    q = examples(1)[0].question
    outs = engine_ov.generate([_vrequest("<video> " + q, clips[0], {"method": "vidcom2", "budget": 9}),
                               _vrequest("<video> " + q, clips[1], {"method": "fastvid", "ratio": 0.3}),
                               _vrequest("<video> " + q, clips[2], None),
                               _vrequest("<video> " + q, clips[0], {"method": "dycoke", "ratio": 1.0}),
                               request("<image> " + q, [_image(0)[1]], {"method": "vidcom2", "budget": 8})],
                              greedy(TOKENS))
    for out, clip, opts, n_frames in ((outs[0], clips[0], {"method": "vidcom2", "budget": 9}, 4),
                                      (outs[1], clips[1], {"method": "fastvid", "ratio": 0.3}, 8),
                                      (outs[2], clips[2], None, 4),
                                      (outs[3], clips[0], {"method": "dycoke", "ratio": 1.0}, 4)):
        feats = tiny_ov.features(clip, video=True)
        frames = torch.arange(n_frames + 1).repeat_interleave(torch.tensor([4] * n_frames + [1]))
        sel = feats if opts is None else select_image(options.parse(opts), feats, temporal=frames)[1]
        ids, ref = tiny_ov.reference("<video> " + q, [sel], TOKENS, video=True)
        assert list(out.prompt_token_ids) == ids
        assert list(out.outputs[0].token_ids) == ref
    img = _image(0)[1]
    sel = select_image(options.parse({"method": "vidcom2", "budget": 8}), tiny_ov.features(img))[1]
    ids, ref = tiny_ov.reference("<image> " + q, [sel], TOKENS)
    assert list(outs[4].prompt_token_ids) == ids
    assert list(outs[4].outputs[0].token_ids) == ref


@pytest.mark.parametrize("i,opts", list(enumerate(CASES)), ids=lambda x: x["method"] if isinstance(x, dict) else f"size{SIZES[x]}")
def test_kept_indices_and_tokens(engine_ov, tiny_ov, record, i, opts):
    import vtp_compile
    ex, img = _image(i)
    prompt = "<image> " + ex.question
    out = engine_ov.generate([request(prompt, [img], opts)], greedy(TOKENS))[0]
    rec = record()
    feats = tiny_ov.features(img)
    assert rec[0]["visual"] == feats.shape[0]
    ex_ = vtp_compile.explain(tiny_ov.model, dict(tiny_ov.hf_inputs(prompt, [img])), opts)
    kept = ex_.sites[0].kept_visual_index[0].tolist()
    assert rec[0]["kept"] == kept
    ids, ref = tiny_ov.reference(prompt, [feats[torch.tensor(kept)]], TOKENS)
    assert list(out.prompt_token_ids) == ids
    assert list(out.outputs[0].token_ids) == ref


def test_batch_of_sizes_and_budgets_and_keep_all(engine_ov, tiny_ov):
    cases = []
    for i in range(4):
        ex, img = _image(i)
        cases.append(("<image> " + ex.question, [img], None if i == 2 else {"method": "divprune", "budget": 6 + 4 * i}))
    ex, img = _image(0)
    cases.append(("<image> " + ex.question, [img], {"method": "divprune", "ratio": 1.0}))
    outs = engine_ov.generate([request(p, ims, o) for p, ims, o in cases], greedy(TOKENS))
    for (prompt, images, opts), out in zip(cases, outs):
        spec = options.parse(opts)
        kept = [tiny_ov.features(im) if spec is None else select_image(spec, tiny_ov.features(im))[1]
                for im in images]
        ids, ref = tiny_ov.reference(prompt, kept, TOKENS)
        assert list(out.prompt_token_ids) == ids
        assert list(out.outputs[0].token_ids) == ref


def test_vision_internals_methods_are_refused(engine_ov):
    ex, img = _image(0)
    with pytest.raises(ValueError, match="packs anyres"):
        engine_ov.generate([request("<image> " + ex.question, [img], {"method": "visionzip", "budget": 8})],
                           greedy(2))
