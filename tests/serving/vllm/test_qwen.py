"""vLLM's Qwen2.5-VL and Qwen2-VL with the plugin: kept indices against vtp's transformers path,
greedy tokens and their log-probabilities against transformers with the same selection and the
same M-RoPE positions (tests/serving/vllm/qwen_support.py says which)."""
from __future__ import annotations

import pytest
import torch

from vtp_compile.serving.vllm import options
from vtp_compile.serving.vllm.selection import select_image
from vtp_compile.testing.vllm_qwen import IMAGE, VIDEO

from .qwen_support import assert_same, greedy_lp, qrequest
from .support import examples

# inductor: vLLM compiles its log-probability gather (sampler.gather_logprobs) with Inductor once
pytestmark = [pytest.mark.vllm, pytest.mark.inductor]
TOKENS = 5
# (height, width) -> merged grid (h/16) x (w/16): 49, 24, 21 and 12 visual tokens
SIZES = [(112, 112), (64, 96), (112, 48), (48, 64)]

SELECT_CASES = [
    {"method": "divprune", "budget": 16},
    {"method": "random", "ratio": 0.25, "seed": 1},
    {"method": "cdpruner", "budget": 10},
    {"method": "acgr", "site": "encoder", "budget": 12, "merge": False},
]


def _image(i, size=None):
    ex = examples(4)[i]
    return ex, (ex.image if size is None else ex.image.resize(size[::-1]))


def _select(tiny, prompt, images, opts):
    """Each image's ``(kept indices, kept features)`` by the plugin's selection on transformers'
    features (None: unpruned)."""
    spec = options.parse(opts)
    if spec is None:
        return [None] * len(images)
    return [select_image(spec, f) for f in tiny.features(images)]


def test_support_table_is_what_is_tested():
    from vtp_compile.serving.vllm.support import CHECKED
    from .test_qwen_video import VIDEO_CASES     # the video methods: test_qwen_video.py
    assert set(CHECKED["qwen2_5_vl"]) == {o["method"] for o in SELECT_CASES + VIDEO_CASES}
    assert set(CHECKED["qwen2_vl"]) <= set(CHECKED["qwen2_5_vl"])


def test_unpruned_matches_transformers(engine_qwen, tiny_qwen, record):
    ex, img = _image(0)
    prompt = IMAGE + " " + ex.question
    out = engine_qwen.generate([qrequest(prompt, [img])], greedy_lp(TOKENS))[0]
    assert record() == []
    assert_same(out, tiny_qwen.reference(prompt, [img], [None], TOKENS))


@pytest.mark.parametrize("opts", SELECT_CASES, ids=lambda o: o["method"])
def test_kept_indices_and_tokens(engine_qwen, tiny_qwen, record, opts):
    ex, img = _image(1)
    prompt = IMAGE + " " + ex.question
    out = engine_qwen.generate([qrequest(prompt, [img], opts)], greedy_lp(TOKENS))[0]
    rec = record()
    assert len(rec) == 1 and rec[0]["visual"] == 49
    kept = tiny_qwen.explain_kept(prompt, img, opts)
    assert rec[0]["kept"] == kept
    k = options.parse(opts).n_keep(49)
    assert len(kept) == k and sum(t == tiny_qwen.image_token for t in out.prompt_token_ids) == k
    feats = tiny_qwen.features([img])[0]
    idx = torch.tensor(kept)
    assert_same(out, tiny_qwen.reference(prompt, [img], [(idx, feats[idx])], TOKENS))


def test_merging_method(engine_qwen, tiny_qwen, record):
    """ACGR with its merge: the merged features, computed on transformers' features."""
    ex, img = _image(2)
    prompt = IMAGE + " " + ex.question
    opts = {"method": "acgr", "site": "encoder", "budget": 9}
    out = engine_qwen.generate([qrequest(prompt, [img], opts)], greedy_lp(TOKENS))[0]
    kept = record()[0]["kept"]
    assert kept == tiny_qwen.explain_kept(prompt, img, opts)
    ids = tiny_qwen.hf_inputs(prompt, [img])["input_ids"][0].tolist()
    at = ids.index(tiny_qwen.image_token)
    emb = tiny_qwen.model.get_input_embeddings()
    with torch.no_grad():
        before, after = emb(torch.tensor(ids[:at])), emb(torch.tensor(ids[at + 49:]))
    sel = select_image(options.parse(opts), tiny_qwen.features([img])[0], before=before, after=after)
    assert sel[0].tolist() == kept
    assert_same(out, tiny_qwen.reference(prompt, [img], [sel], TOKENS))


def test_keep_all_equals_unpruned(engine_qwen, record):
    ex, img = _image(3, SIZES[2])
    prompt = IMAGE + " " + ex.question
    plain = engine_qwen.generate([qrequest(prompt, [img])], greedy_lp(TOKENS))[0]
    for opts in ({"method": "divprune", "budget": 21}, {"method": "random", "ratio": 1.0}):
        out = engine_qwen.generate([qrequest(prompt, [img], opts)], greedy_lp(TOKENS))[0]
        assert record()[0]["kept"] == list(range(21))
        assert list(out.prompt_token_ids) == list(plain.prompt_token_ids)
        assert list(out.outputs[0].token_ids) == list(plain.outputs[0].token_ids)
        assert [d[t].logprob for d, t in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)] == \
            [d[t].logprob for d, t in zip(plain.outputs[0].logprobs, plain.outputs[0].token_ids)]


def test_continuous_batching_sizes_counts_budgets(engine_qwen, tiny_qwen, record):
    """Different image sizes (tall, wide, square), image counts and budgets, and an unpruned
    request, in one generate call with 64-token prefill chunks: each equals transformers."""
    exs = examples(4)
    ims = [_image(i, SIZES[i])[1] for i in range(4)]
    cases = [
        (IMAGE + " " + exs[0].question, [ims[0]], {"method": "divprune", "budget": 8}),
        (IMAGE + " " + IMAGE + " " + exs[1].question, [ims[1], ims[2]], {"method": "divprune", "ratio": 0.3}),
        (IMAGE + " " + exs[2].question, [ims[2]], None),
        (exs[3].question + " " + IMAGE + " " + exs[0].question + " " + IMAGE, [ims[3], ims[0]],
         {"method": "random", "budget": 10}),
        (IMAGE + " " + exs[3].question, [ims[1]], {"method": "cdpruner", "budget": 6}),
    ]
    outs = engine_qwen.generate([qrequest(p, i, o) for p, i, o in cases], greedy_lp(TOKENS))
    record()
    for (prompt, images, opts), out in zip(cases, outs):
        if opts is not None and options.parse(opts).text:
            continue       # prompt-conditioned: checked alone above (its text is the prompt's)
        assert_same(out, tiny_qwen.reference(prompt, images, _select(tiny_qwen, prompt, images, opts), TOKENS))
    alone = engine_qwen.generate([qrequest(*cases[4])], greedy_lp(TOKENS))[0]
    assert list(alone.outputs[0].token_ids) == list(outs[4].outputs[0].token_ids)


def test_prefix_cache(engine_qwen, tiny_qwen):
    """Prefix caching on: the same image at two budgets are two entries (each repeated equals
    transformers), and a request that reuses a cached pruned image and prompt start but goes on
    with other text gets the text after the image at its unpruned positions."""
    assert engine_qwen.llm_engine.vllm_config.cache_config.enable_prefix_caching
    ex, img = _image(0)
    prompt = IMAGE + " " + ex.question
    feats = tiny_qwen.features([img])
    for b in (8, 30, 8, 30):
        opts = {"method": "divprune", "budget": b}
        out = engine_qwen.generate([qrequest(prompt, [img], opts)], greedy_lp(TOKENS))[0]
        assert_same(out, tiny_qwen.reference(prompt, [img], _select(tiny_qwen, prompt, [img], opts), TOKENS))
    longer = prompt + " " + " ".join([examples(4)[3].question] * 3)
    opts = {"method": "divprune", "budget": 30}
    out = engine_qwen.generate([qrequest(longer, [img], opts)], greedy_lp(TOKENS))[0]
    assert out.num_cached_tokens >= 32
    assert_same(out, tiny_qwen.reference(longer, [img], [select_image(options.parse(opts), feats[0])], TOKENS))


def test_tower_internals_methods_are_refused(engine_qwen):
    ex, img = _image(0)
    with pytest.raises(ValueError, match="Qwen's tower"):
        engine_qwen.generate([qrequest(IMAGE + " " + ex.question, [img], {"method": "visionzip", "budget": 8})],
                             greedy_lp(2))


# ---- Qwen2-VL: the same adapter over vLLM's Qwen2-VL class (which has no EVS of its own)
def test_qwen2_vl_unpruned_pruned_keep_all(engine_qwen2, tiny_qwen2, record):
    exs = examples(4)
    img = exs[1].image.resize((96, 64))
    prompt = exs[2].question + " " + IMAGE + " " + exs[1].question
    plain = engine_qwen2.generate([qrequest(prompt, [img])], greedy_lp(TOKENS))[0]
    assert_same(plain, tiny_qwen2.reference(prompt, [img], [None], TOKENS))
    for opts in ({"method": "divprune", "budget": 7}, {"method": "cdpruner", "budget": 9}):
        out = engine_qwen2.generate([qrequest(prompt, [img], opts)], greedy_lp(TOKENS))[0]
        kept = record()[0]["kept"]
        assert kept == tiny_qwen2.explain_kept(prompt, img, opts)
        idx = torch.tensor(kept)
        assert_same(out, tiny_qwen2.reference(prompt, [img], [(idx, tiny_qwen2.features([img])[0][idx])], TOKENS))
    full = engine_qwen2.generate([qrequest(prompt, [img], {"method": "divprune", "budget": 24})],
                                 greedy_lp(TOKENS))[0]
    assert list(full.outputs[0].token_ids) == list(plain.outputs[0].token_ids)


# ---- clips (Qwen2.5-VL video; positions: frame t at t * second_per_grid_ts * tokens_per_second)
def _clip(first: int, frames: int, size):
    import numpy as np
    exs = examples(8)
    return np.stack([np.asarray(exs[(first + i) % 8].image.convert("RGB").resize(size[::-1]))
                     for i in range(frames)])


@pytest.mark.parametrize("opts", [{"method": "divprune", "budget": 20}, {"method": "cdpruner", "budget": 16}],
                         ids=lambda o: o["method"])
def test_video_kept_indices_and_tokens(engine_qwen, tiny_qwen, record, opts):
    """A 4-frame 96 x 96 clip: 2 x 6 x 6 = 72 tokens, t positions 0 and 2 (tokens_per_second 2)."""
    clip = _clip(0, 4, (96, 96))
    prompt = VIDEO + " " + examples(1)[0].question
    out = engine_qwen.generate([qrequest(prompt, [clip], opts, video=True)], greedy_lp(TOKENS))[0]
    rec = record()
    assert rec[0]["visual"] == 72
    kept = tiny_qwen.explain_kept(prompt, clip, opts, video=True)
    assert rec[0]["kept"] == kept
    assert sum(t == tiny_qwen.video_token for t in out.prompt_token_ids) == options.parse(opts).n_keep(72)
    idx = torch.tensor(kept)
    feats = tiny_qwen.features([clip], video=True)[0]
    assert_same(out, tiny_qwen.reference(prompt, [clip], [(idx, feats[idx])], TOKENS, video=True))


def test_video_batch_and_keep_all(engine_qwen, tiny_qwen, record):
    """Clips of other lengths and sizes, pruned and unpruned, beside an image request; keep-all
    equals unpruned."""
    # 2x4x6 = 48 and 3x6x6 = 108 tokens. (Some clips, 6 frames of 48 x 64 among them, differ
    # between vLLM and transformers by ~0.01 in log-probability without the plugin too.)
    clips = [_clip(1, 4, (64, 96)), _clip(2, 6, (96, 96))]
    q = examples(3)[2].question
    cases = [(VIDEO + " " + q, [clips[0]], {"method": "divprune", "budget": 12}, True),
             (VIDEO + " " + q, [clips[1]], None, True),
             (VIDEO + " " + q, [clips[1]], {"method": "random", "ratio": 0.5}, True),
             (IMAGE + " " + q, [_image(0)[1]], {"method": "divprune", "budget": 9}, False)]
    outs = engine_qwen.generate([qrequest(p, c, o, video=v) for p, c, o, v in cases], greedy_lp(TOKENS))
    record()
    for (prompt, items, opts, video), out in zip(cases, outs):
        spec = options.parse(opts)
        sel = [None if spec is None else select_image(spec, f) for f in tiny_qwen.features(items, video)]
        assert_same(out, tiny_qwen.reference(prompt, items, sel, TOKENS, video=video))
    full = engine_qwen.generate([qrequest(cases[1][0], clips[1:], {"method": "divprune", "budget": 108}, video=True)],
                                greedy_lp(TOKENS))[0]
    assert list(full.outputs[0].token_ids) == list(outs[1].outputs[0].token_ids)
    assert list(full.prompt_token_ids) == list(outs[1].prompt_token_ids)


def test_qwen2_vl_video(engine_qwen2, tiny_qwen2, record):
    """A clip on Qwen2-VL (t positions unscaled: no tokens_per_second): kept indices equal
    explain, tokens and log-probabilities equal transformers; keep-all equals unpruned."""
    clip = _clip(3, 4, (64, 96))       # 2 x 4 x 6 = 48 tokens
    prompt = VIDEO + " " + examples(2)[1].question
    opts = {"method": "divprune", "budget": 14}
    out = engine_qwen2.generate([qrequest(prompt, [clip], opts, video=True)], greedy_lp(TOKENS))[0]
    kept = record()[0]["kept"]
    assert kept == tiny_qwen2.explain_kept(prompt, clip, opts, video=True)
    idx = torch.tensor(kept)
    feats = tiny_qwen2.features([clip], video=True)[0]
    assert_same(out, tiny_qwen2.reference(prompt, [clip], [(idx, feats[idx])], TOKENS, video=True))
    plain = engine_qwen2.generate([qrequest(prompt, [clip], video=True)], greedy_lp(TOKENS))[0]
    full = engine_qwen2.generate([qrequest(prompt, [clip], {"method": "random", "budget": 48}, video=True)],
                                 greedy_lp(TOKENS))[0]
    assert list(full.outputs[0].token_ids) == list(plain.outputs[0].token_ids)
    assert_same(plain, tiny_qwen2.reference(prompt, [clip], [None], TOKENS, video=True))
