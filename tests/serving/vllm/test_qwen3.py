"""vLLM's Qwen3-VL with the plugin (images and clips; deepstack): kept indices against vtp's
transformers path, greedy tokens and their log-probabilities against transformers with the same
selection, the same deepstack features and the same M-RoPE positions
(tests/serving/vllm/qwen3_support.py); the methods Qwen3-VL cannot run are refused."""
from __future__ import annotations

import pytest
import torch

from vtp_compile.serving.vllm import options
from vtp_compile.serving.vllm.selection import select_image
from vtp_compile.testing.vllm_qwen import IMAGE, VIDEO

from .qwen_support import assert_same, got, greedy_lp, qrequest
from .support import MAX_LEN, examples
from .test_qwen import SIZES, _clip, _image

# inductor: vLLM compiles its log-probability gather with Inductor once (as test_qwen.py)
pytestmark = [pytest.mark.vllm, pytest.mark.inductor]
TOKENS = 5

SELECT_CASES = [
    {"method": "divprune", "budget": 16},
    {"method": "random", "ratio": 0.25, "seed": 1},
    {"method": "cdpruner", "budget": 10},
    {"method": "acgr", "site": "encoder", "budget": 12, "merge": False},
]


VIDEO_CASES = [
    {"method": "divprune", "budget": 40},
    {"method": "vidcom2", "budget": 30},
    {"method": "vidcom2", "ratio": 0.3, "per_frame": "even", "min_per_frame": 2},
    {"method": "dycoke", "budget": 36},
    {"method": "fastvid", "budget": 32, "cuts": 1, "anchor_every": 2},
    {"method": "random", "ratio": 0.25, "per_frame": "even", "min_per_frame": 3},
    {"method": "cdpruner", "budget": 30},
    {"method": "acgr", "site": "encoder", "budget": 30},
]
# per_frame's frames are the same on every Qwen clip (test_qwen_video.py runs them in CI): the
# full tier only here, to keep this file near a minute
_FULL_TIER = ({"method": "vidcom2", "ratio": 0.3, "per_frame": "even", "min_per_frame": 2},
              {"method": "random", "ratio": 0.25, "per_frame": "even", "min_per_frame": 3})


def _sel(tiny, images, opts, video=False, prompt=None):
    """Each item's ``(kept indices, kept main features)`` by the plugin's selection on
    transformers' features (a clip's frames from its grid; for a prompt-reading method the
    ``prompt``'s one item, with its text before and after the first visual token), None:
    unpruned."""
    spec = options.parse(opts)
    feats = tiny.features(images, video)
    if spec is None:
        return [None] * len(feats)
    kw = {}
    if spec.text:
        ids = tiny.hf_inputs(prompt, images, video)["input_ids"][0].tolist()
        token = tiny.video_token if video else tiny.image_token
        at = ids.index(token)
        emb = tiny.model.get_input_embeddings()
        with torch.no_grad():
            kw = {"before": emb(torch.tensor(ids[:at])),
                  "after": emb(torch.tensor([x for x in ids[at:] if x != token]))}
    return [select_image(spec, f, temporal=_frames(tiny, c) if video else None, **kw)
            for f, c in zip(feats, images)]


def _frames(tiny, clip) -> torch.Tensor:
    t, h, w = (int(v) for v in tiny.hf_inputs(VIDEO, [clip], video=True)["video_grid_thw"][0])
    m = tiny.model.config.vision_config.spatial_merge_size
    return torch.arange(t).repeat_interleave(h * w // (m * m))


def _same_clip(out, ref):
    """A pruned clip's prompt ids are a stand-in layout (every kept ``<|video_pad|>`` after the
    first timestamp): the same tokens as transformers' prompt, in another order; the embeddings
    carry the real layout, so tokens and log-probabilities equal transformers'."""
    ids, toks, lps = got(out)
    assert sorted(ids) == sorted(ref[0])
    assert_same(out, (ids, ref[1], ref[2]))


def test_support_table_is_what_is_tested():
    from vtp_compile.serving.vllm.support import CHECKED, NOT_ADAPTED, REFUSED
    assert set(CHECKED["qwen3_vl"]) == {o["method"] for o in SELECT_CASES + VIDEO_CASES}
    assert set(REFUSED["qwen3_vl"]) == {"visionzip", "nuwa"}
    assert "qwen3_vl" not in NOT_ADAPTED


def test_unpruned_matches_transformers(engine_qwen3, tiny_qwen3, record):
    ex, img = _image(0)
    prompt = IMAGE + " " + ex.question
    out = engine_qwen3.generate([qrequest(prompt, [img])], greedy_lp(TOKENS))[0]
    assert record() == []
    assert_same(out, tiny_qwen3.reference(prompt, [img], [None], TOKENS))


@pytest.mark.parametrize("opts", SELECT_CASES, ids=lambda o: o["method"])
def test_kept_indices_and_tokens(engine_qwen3, tiny_qwen3, record, opts):
    """Kept indices equal ``explain`` on transformers; tokens and log-probabilities equal
    transformers with those tokens, their deepstack features and their unpruned positions."""
    ex, img = _image(1)
    prompt = IMAGE + " " + ex.question
    out = engine_qwen3.generate([qrequest(prompt, [img], opts)], greedy_lp(TOKENS))[0]
    rec = record()
    assert len(rec) == 1 and rec[0]["visual"] == 49
    kept = tiny_qwen3.explain_kept(prompt, img, opts)
    assert rec[0]["kept"] == kept
    k = options.parse(opts).n_keep(49)
    assert len(kept) == k and sum(t == tiny_qwen3.image_token for t in out.prompt_token_ids) == k
    idx = torch.tensor(kept)
    assert_same(out, tiny_qwen3.reference(prompt, [img], [(idx, tiny_qwen3.features([img])[0][idx])], TOKENS))


def test_positions_are_the_unpruned_ones(engine_qwen3, tiny_qwen3):
    """The reference with the kept tokens numbered as the first ``n_keep`` grid cells and the
    text after them moved up (vLLM's own EVS rule) gives other log-probabilities: the test above
    tells the two apart."""
    ex, img = _image(1)
    prompt = IMAGE + " " + ex.question
    opts = {"method": "divprune", "budget": 16}
    out = engine_qwen3.generate([qrequest(prompt, [img], opts)], greedy_lp(TOKENS))[0]
    idx = torch.tensor(tiny_qwen3.explain_kept(prompt, img, opts))
    first = torch.arange(16)
    feats = tiny_qwen3.features([img])[0]
    wrong = tiny_qwen3.reference(prompt, [img], [(first, feats[idx])], TOKENS)
    assert wrong[0] == list(out.prompt_token_ids)
    with pytest.raises(AssertionError):
        assert_same(out, wrong)


def test_merging_method(engine_qwen3, tiny_qwen3, record):
    """ACGR with its merge: the merged main features (computed on transformers' features), each
    kept token's own deepstack features."""
    ex, img = _image(2)
    prompt = IMAGE + " " + ex.question
    opts = {"method": "acgr", "site": "encoder", "budget": 9}
    out = engine_qwen3.generate([qrequest(prompt, [img], opts)], greedy_lp(TOKENS))[0]
    kept = record()[0]["kept"]
    assert kept == tiny_qwen3.explain_kept(prompt, img, opts)
    ids = tiny_qwen3.hf_inputs(prompt, [img])["input_ids"][0].tolist()
    at = ids.index(tiny_qwen3.image_token)
    emb = tiny_qwen3.model.get_input_embeddings()
    with torch.no_grad():
        before, after = emb(torch.tensor(ids[:at])), emb(torch.tensor(ids[at + 49:]))
    sel = select_image(options.parse(opts), tiny_qwen3.features([img])[0], before=before, after=after)
    assert sel[0].tolist() == kept
    assert_same(out, tiny_qwen3.reference(prompt, [img], [sel], TOKENS))


def test_keep_all_equals_unpruned(engine_qwen3, record):
    ex, img = _image(3, SIZES[2])
    prompt = IMAGE + " " + ex.question
    plain = engine_qwen3.generate([qrequest(prompt, [img])], greedy_lp(TOKENS))[0]
    for opts in ({"method": "divprune", "budget": 21}, {"method": "random", "ratio": 1.0}):
        out = engine_qwen3.generate([qrequest(prompt, [img], opts)], greedy_lp(TOKENS))[0]
        assert record()[0]["kept"] == list(range(21))
        assert list(out.prompt_token_ids) == list(plain.prompt_token_ids)
        assert list(out.outputs[0].token_ids) == list(plain.outputs[0].token_ids)
        assert [d[t].logprob for d, t in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)] == \
            [d[t].logprob for d, t in zip(plain.outputs[0].logprobs, plain.outputs[0].token_ids)]


def test_batch_sizes_counts_budgets(engine_qwen3, tiny_qwen3, record):
    """Tall, wide and square images, one and two per prompt, different budgets and an unpruned
    request in one generate call with 64-token prefill chunks: each equals transformers."""
    exs = examples(4)
    ims = [_image(i, SIZES[i])[1] for i in range(4)]
    cases = [
        (IMAGE + " " + exs[0].question, [ims[0]], {"method": "divprune", "budget": 8}),
        (IMAGE + " " + IMAGE + " " + exs[1].question, [ims[1], ims[2]], {"method": "divprune", "ratio": 0.3}),
        (IMAGE + " " + exs[2].question, [ims[2]], None),
        (exs[3].question + " " + IMAGE + " " + exs[0].question + " " + IMAGE, [ims[3], ims[0]],
         {"method": "random", "budget": 10}),
    ]
    outs = engine_qwen3.generate([qrequest(p, i, o) for p, i, o in cases], greedy_lp(TOKENS))
    record()
    for (prompt, images, opts), out in zip(cases, outs):
        assert_same(out, tiny_qwen3.reference(prompt, images, _sel(tiny_qwen3, images, opts), TOKENS))


def test_prefix_cache(engine_qwen3, tiny_qwen3):
    """Requests that reuse a cached pruned image and prompt start but go on with other text: the
    text after the image keeps its unpruned positions, both when the cached 32-token block ends
    where the image's run does (budget 30: nothing of the image is recomputed) and when it ends
    inside the run (budget 40: its last 10 kept tokens are numbered from the cached start)."""
    assert engine_qwen3.llm_engine.vllm_config.cache_config.enable_prefix_caching
    ex, img = _image(0)
    prompt = IMAGE + " " + ex.question
    longer = prompt + " " + " ".join([examples(4)[3].question] * 3)
    for b in (30, 40):
        opts = {"method": "divprune", "budget": b}
        ref = _sel(tiny_qwen3, [img], opts)
        first = engine_qwen3.generate([qrequest(prompt, [img], opts)], greedy_lp(TOKENS))[0]
        assert_same(first, tiny_qwen3.reference(prompt, [img], ref, TOKENS))
        out = engine_qwen3.generate([qrequest(longer, [img], opts)], greedy_lp(TOKENS))[0]
        assert out.num_cached_tokens >= 32
        assert_same(out, tiny_qwen3.reference(longer, [img], ref, TOKENS))


def test_prefix_cache_inside_a_pruned_clip(engine_qwen3, tiny_qwen3):
    """A cached prompt start that ends inside a pruned clip's placeholder (66 rows from token 2,
    32-token blocks): the rest of the clip's rows are numbered from the cached start."""
    clip = _clip(5, 8, (96, 96))         # not test_clip_kept_indices_and_tokens' (its encoder cache)
    opts = {"method": "divprune", "budget": 40}
    q = examples(4)
    prompt, longer = VIDEO + " " + q[0].question, VIDEO + " " + q[3].question + " " + q[0].question
    sel = _sel(tiny_qwen3, [clip], opts, video=True)
    first = engine_qwen3.generate([qrequest(prompt, [clip], opts, video=True)], greedy_lp(TOKENS))[0]
    _same_clip(first, tiny_qwen3.reference(prompt, [clip], sel, TOKENS, video=True))
    out = engine_qwen3.generate([qrequest(longer, [clip], opts, video=True)], greedy_lp(TOKENS))[0]
    ids = list(out.prompt_token_ids)         # the placeholder ends at the clip's last <|vision_end|>
    end = len(ids) - ids[::-1].index(tiny_qwen3.model.config.vision_end_token_id) - 1
    assert 32 <= out.num_cached_tokens < end
    _same_clip(out, tiny_qwen3.reference(longer, [clip], sel, TOKENS, video=True))


def test_unpruned_equals_vllm_own_class(engine_qwen3, engine_qwen3_own, tiny_qwen3, record):
    """Without a ``vtp`` option the adapter runs as vLLM's own class, positions included (its
    recompute numbers every item, pruned or not): a clip (timestamps between its frames' runs)
    and a two-image prompt, batched with a pruned image request; all equal transformers too."""
    assert engine_qwen3_own.apply_model(lambda m: type(m).__name__) == ["Qwen3VLForConditionalGeneration"]
    assert engine_qwen3.apply_model(lambda m: type(m).__name__) == ["VtpQwen3VLForConditionalGeneration"]
    clip = _clip(0, 4, (64, 96))        # 2 temporal patches of 4 x 6 = 24 tokens each
    q = examples(2)[1].question
    ims = [_image(i, SIZES[i])[1] for i in (1, 2)]
    plain = [qrequest(VIDEO + " " + q, [clip], video=True), qrequest(IMAGE + " " + IMAGE + " " + q, ims)]
    pruned = qrequest(IMAGE + " " + q, [ims[0]], {"method": "divprune", "budget": 12})
    outs = engine_qwen3.generate(plain + [pruned], greedy_lp(TOKENS))
    assert len(record()) == 1
    own = engine_qwen3_own.generate(plain, greedy_lp(TOKENS))
    for a, b in zip(outs, own):
        assert got(a) == got(b)
    assert_same(outs[0], tiny_qwen3.reference(plain[0]["prompt"], [clip], [None], TOKENS, video=True))
    assert_same(outs[1], tiny_qwen3.reference(plain[1]["prompt"], ims, [None, None], TOKENS))
    sel = _sel(tiny_qwen3, [ims[0]], {"method": "divprune", "budget": 12})
    assert_same(outs[2], tiny_qwen3.reference(pruned["prompt"], [ims[0]], sel, TOKENS))


@pytest.mark.parametrize("opts,match", [
    ({"method": "visionzip", "budget": 8}, "Qwen3-VL's tower"),
    ({"method": "nuwa", "budget": 8}, "Qwen3-VL's tower"),
    ({"method": "divprune", "budget": -3}, "budget"),
    ({"method": "fastv", "budget": 8}, "fastv"),
], ids=["visionzip", "nuwa", "bad-budget", "layer-site"])
def test_refused_options(engine_qwen3, opts, match):
    ex, img = _image(0)
    with pytest.raises(ValueError, match=match):
        engine_qwen3.generate([qrequest(IMAGE + " " + ex.question, [img], opts)], greedy_lp(2))


# ---- clips: one run per temporal patch after its timestamp; the model writes the real layout

@pytest.mark.parametrize("opts", [pytest.param(o, marks=pytest.mark.vllm_slow) if o in _FULL_TIER else o
                                  for o in VIDEO_CASES], ids=lambda o: "-".join(str(v) for v in o.values()))
def test_clip_kept_indices_and_tokens(engine_qwen3, tiny_qwen3, record, opts):
    """An 8-frame 96 x 96 clip: 4 temporal patches of 6 x 6 = 144 tokens (its placeholder
    crosses 64-token prefill chunks). Kept indices equal ``explain``; tokens and log-probabilities
    equal transformers with the kept tokens in their frames, between the same timestamps, at
    their unpruned positions (FastVID: its merged features)."""
    clip = _clip(1, 8, (96, 96))
    prompt = VIDEO + " " + examples(2)[0].question
    out = engine_qwen3.generate([qrequest(prompt, [clip], opts, video=True)], greedy_lp(TOKENS))[0]
    rec = record()
    assert len(rec) == 1 and rec[0]["visual"] == 144
    kept = tiny_qwen3.explain_kept(prompt, clip, opts, video=True)
    assert rec[0]["kept"] == kept
    sel = _sel(tiny_qwen3, [clip], opts, video=True, prompt=prompt)
    assert sel[0][0].tolist() == kept
    assert sum(t == tiny_qwen3.video_token for t in out.prompt_token_ids) == len(kept)
    _same_clip(out, tiny_qwen3.reference(prompt, [clip], sel, TOKENS, video=True))


def test_clip_batch_and_keep_all(engine_qwen3, tiny_qwen3, record):
    """Clips of other lengths and sizes, pruned and unpruned, beside a pruned image request, in
    one generate call; keep-all equals unpruned (tokens and log-probabilities)."""
    clips = [_clip(2, 4, (64, 96)), _clip(3, 6, (96, 96))]    # 2 x 4 x 6 = 48, 3 x 6 x 6 = 108 tokens
    q = examples(3)[2].question
    img = _image(0)[1]
    cases = [(VIDEO + " " + q, [clips[0]], {"method": "divprune", "budget": 12}, True),
             (VIDEO + " " + q, [clips[1]], None, True),
             (VIDEO + " " + q, [clips[1]], {"method": "vidcom2", "ratio": 0.4}, True),
             (IMAGE + " " + q, [img], {"method": "divprune", "budget": 9}, False)]
    outs = engine_qwen3.generate([qrequest(p, c, o, video=v) for p, c, o, v in cases], greedy_lp(TOKENS))
    assert len(record()) == 3
    for (prompt, items, opts, video), out in zip(cases, outs):
        ref = tiny_qwen3.reference(prompt, items, _sel(tiny_qwen3, items, opts, video), TOKENS, video=video)
        (_same_clip if video else assert_same)(out, ref)
    full = engine_qwen3.generate([qrequest(cases[1][0], clips[1:], {"method": "divprune", "budget": 108},
                                           video=True)], greedy_lp(TOKENS))[0]
    (_, toks, lps), (_, toks0, lps0) = got(full), got(outs[1])
    assert toks == toks0 and max(abs(a - b) for a, b in zip(lps, lps0)) < 1e-4   # batched vs alone


# -- the processor alone (no engine): engine-wide options, vLLM's EVS --------------------------

def _processor(path, **kw):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from vtp_compile.serving.vllm import register
    register()
    return MULTIMODAL_REGISTRY.create_processor(ModelConfig(model=str(path), dtype="float32",
                                                            max_model_len=MAX_LEN, **kw))


def _apply(proc, prompt: str, data: dict, vtp=None):
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs
    ids = proc.info.get_tokenizer()(prompt)["input_ids"]
    kwargs = {"vtp": vtp} if vtp is not None else {}
    return proc.apply(ProcessorInputs(ids, proc.info.parse_mm_data(data), hf_processor_mm_kwargs=kwargs),
                      TimingContext(enabled=False))


def test_engine_wide_options_and_evs(tiny_qwen3):
    """Engine-wide options reach images and clips (a pruned clip's placeholder: all its tokens
    embedding slots, ``n_keep`` of them ``<|video_pad|>``); a ``vtp`` option beside vLLM's EVS is
    refused."""
    from vtp_compile.errors import OptionError
    from .qwen_support import video_metadata
    ex, img = _image(0)
    proc = _processor(tiny_qwen3.path, mm_processor_kwargs={"vtp": {"method": "divprune", "budget": 8}})
    out = _apply(proc, IMAGE + " " + ex.question, {"image": [img]})
    assert sum(t == tiny_qwen3.image_token for t in out["prompt_token_ids"]) == 8
    clip = _clip(0, 4, (64, 64))            # 2 temporal patches of 4 x 4
    out = _apply(proc, VIDEO + " what", {"video": [(clip, {**video_metadata(4), "do_sample_frames": False})]})
    rng = out["mm_placeholders"]["video"][0]
    assert rng.is_embed is None
    run = out["prompt_token_ids"][rng.offset:rng.offset + rng.length]
    assert run.count(tiny_qwen3.video_token) == 8
    assert run.count(tiny_qwen3.model.config.vision_start_token_id) == 2
    evs = _processor(tiny_qwen3.path, video_pruning_rate=0.5)
    with pytest.raises(OptionError, match="video_pruning_rate"):
        _apply(evs, IMAGE + " " + ex.question, {"image": [img]}, {"method": "divprune", "budget": 8})
