"""vLLM's LLaVA with the plugin, against transformers and against vtp's transformers path."""
from __future__ import annotations

import logging

import pytest
import torch

from vtp_compile.serving.vllm import options
from vtp_compile.serving.vllm.selection import select_image

from .support import examples, greedy, request

pytestmark = pytest.mark.vllm

V = 196
TOKENS = 6


def _explain_kept(tiny, ex, opts):
    """Kept indices of vtp's transformers path (vtp_compile.explain), one image."""
    import vtp_compile
    inputs = dict(tiny.hf_inputs("<image> " + ex.question, [ex.image]))
    spec = options.parse(opts)
    if spec.internals:
        vtp_compile.attach(tiny.model)
    try:
        ex_ = vtp_compile.explain(tiny.model, inputs, opts)
    finally:
        if spec.internals:
            vtp_compile.detach(tiny.model)
    site = next(s for s in ex_.sites if s.name == spec.site.name)
    return site.kept_visual_index[0].tolist()


SELECT_CASES = [
    {"method": "divprune", "budget": 16},
    {"method": "random", "budget": 20},
    {"method": "random", "ratio": 0.1, "seed": 3},
    {"method": "cdpruner", "budget": 24},
    {"method": "acgr", "site": "encoder", "budget": 16, "merge": False},
]
MERGE_CASES = [
    {"method": "visionzip", "budget": 16},
    {"method": "nuwa", "budget": 16},
    {"method": "acgr", "site": "encoder", "budget": 12},
]


def test_support_table_is_what_is_tested():
    from vtp_compile.serving.vllm.support import CHECKED
    assert set(CHECKED["llava"]) == {o["method"] for o in SELECT_CASES + MERGE_CASES}


def test_unpruned_matches_transformers(engine, tiny):
    ex = examples(1)[0]
    out = engine.generate([request("<image> " + ex.question, [ex.image])], greedy(TOKENS))[0]
    ids, ref = tiny.reference("<image> " + ex.question, [tiny.features(ex.image)], TOKENS)
    assert list(out.prompt_token_ids) == ids
    assert list(out.outputs[0].token_ids) == ref


@pytest.mark.parametrize("opts", SELECT_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_pruned_matches_transformers_path(engine, tiny, record, opts):
    """Kept indices equal vtp's transformers path (explain) for the same image and options, and
    greedy tokens equal transformers fed those features with vLLM's position semantics."""
    ex = examples(2)[1]
    prompt = "<image> " + ex.question
    out = engine.generate([request(prompt, [ex.image], opts)], greedy(TOKENS))[0]
    rec = record()
    assert len(rec) == 1 and rec[0]["visual"] == V
    kept = _explain_kept(tiny, ex, opts)
    assert rec[0]["kept"] == kept
    k = options.parse(opts).n_keep(V)
    assert len(kept) == k
    feats = tiny.features(ex.image)[torch.tensor(kept)]
    ids, ref = tiny.reference(prompt, [feats], TOKENS)
    assert list(out.prompt_token_ids) == ids
    assert sum(t == tiny.image_token for t in out.prompt_token_ids) == k
    assert list(out.outputs[0].token_ids) == ref


@pytest.mark.parametrize("opts", MERGE_CASES, ids=lambda o: o["method"])
def test_merging_methods(engine, tiny, record, opts):
    """Methods that read the vision tower or merge: kept indices equal the transformers path;
    greedy tokens equal transformers fed the plugin's merged features (computed there from
    transformers' features and internals)."""
    import vtp_compile
    from vtp_compile.vision_context import last_record
    ex = examples(3)[2]
    prompt = "<image> " + ex.question
    out = engine.generate([request(prompt, [ex.image], opts)], greedy(TOKENS))[0]
    rec = record()
    kept = _explain_kept(tiny, ex, opts)
    assert rec[0]["kept"] == kept
    spec = options.parse(opts)
    ctx = before = after = None
    if spec.internals:
        vtp_compile.attach(tiny.model)
        try:
            with torch.no_grad():
                tiny.model.generate(**tiny.hf_inputs(prompt, [ex.image]), max_new_tokens=1)
            r = last_record()
        finally:
            vtp_compile.detach(tiny.model)
        ctx = (r.cls_attn, r.upper, r.grid[0], r.grid[1], r.keys, r.received)
    if spec.text:
        ids = tiny.processor.tokenizer(prompt)["input_ids"]
        emb = tiny.model.get_input_embeddings()
        at = ids.index(tiny.image_token)
        with torch.no_grad():
            before, after = emb(torch.tensor(ids[:at])), emb(torch.tensor(ids[at + 1:]))
    idx, feats = select_image(spec, tiny.features(ex.image), ctx=ctx, before=before, after=after)
    assert idx.tolist() == kept
    ids, ref = tiny.reference(prompt, [feats], TOKENS)
    assert list(out.prompt_token_ids) == ids
    assert list(out.outputs[0].token_ids) == ref


def test_keep_all_equals_unpruned(engine, record):
    ex = examples(1)[0]
    prompt = "<image> " + ex.question
    plain = engine.generate([request(prompt, [ex.image])], greedy(TOKENS))[0]
    assert record() == []
    for opts in ({"method": "divprune", "budget": V}, {"method": "random", "budget": 10 * V},
                 {"method": "divprune", "ratio": 1.0}):
        out = engine.generate([request(prompt, [ex.image], opts)], greedy(TOKENS))[0]
        assert list(out.prompt_token_ids) == list(plain.prompt_token_ids)
        assert list(out.outputs[0].token_ids) == list(plain.outputs[0].token_ids)
        assert record()[0]["kept"] == list(range(V))


def test_continuous_batching(engine, tiny, record):
    """Requests with different images, image counts and budgets in one generate call: each one
    equals transformers with its own per-image selection."""
    exs = examples(4)
    cases = [
        ("<image> " + exs[0].question, [exs[0].image], {"method": "divprune", "budget": 8}),
        ("<image> <image> " + exs[1].question, [exs[1].image, exs[2].image],
         {"method": "divprune", "ratio": 0.25}),
        ("<image> " + exs[3].question, [exs[3].image], None),
        ("<image> " + exs[2].question + " <image>", [exs[2].image, exs[0].image],
         {"method": "random", "budget": 30}),
        ("<image> " + exs[0].question, [exs[0].image], {"method": "divprune", "budget": 40}),
    ]
    outs = engine.generate([request(p, ims, o) for p, ims, o in cases], greedy(TOKENS))
    record()
    for (prompt, images, opts), out in zip(cases, outs):
        spec = options.parse(opts)
        kept = [tiny.features(im) if spec is None else select_image(spec, tiny.features(im))[1]
                for im in images]
        ids, ref = tiny.reference(prompt, kept, TOKENS)
        assert list(out.prompt_token_ids) == ids, prompt
        assert list(out.outputs[0].token_ids) == ref, prompt


def test_batch_mixes_methods_that_carry_different_fields(engine, tiny, record):
    """Prompt-conditioned (an extra per-image field), vision-internals, plain and unpruned
    requests in one step: each equals the same request served alone."""
    exs = examples(4)
    cases = [
        ("<image> " + exs[0].question, [exs[0].image], {"method": "cdpruner", "budget": 10}),
        ("<image> " + exs[1].question, [exs[1].image], {"method": "visionzip", "budget": 20}),
        ("<image> " + exs[2].question, [exs[2].image], None),
        ("<image> <image> " + exs[3].question, [exs[3].image, exs[1].image],
         {"method": "acgr", "site": "encoder", "budget": 9}),
        ("<image> " + exs[0].question, [exs[0].image], {"method": "random", "budget": 5}),
    ]
    together = engine.generate([request(p, ims, o) for p, ims, o in cases], greedy(TOKENS))
    alone = [engine.generate([request(p, ims, o)], greedy(TOKENS))[0] for p, ims, o in cases]
    record()
    for a, b in zip(together, alone):
        assert list(a.prompt_token_ids) == list(b.prompt_token_ids)
        assert list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)


def test_same_image_two_budgets_prefix_cache(engine, tiny):
    """With prefix caching on, the same image and prompt at two budgets are two cache entries:
    each request, repeated, gives its own answer, equal to transformers."""
    assert engine.llm_engine.vllm_config.cache_config.enable_prefix_caching
    ex = examples(2)[0]
    prompt = "<image> " + ex.question
    feats = tiny.features(ex.image)
    expected = {}
    for b in (8, 64):
        spec = options.parse({"method": "divprune", "budget": b})
        expected[b] = tiny.reference(prompt, [select_image(spec, feats)[1]], TOKENS)
    for b in (8, 64, 8, 64):
        out = engine.generate([request(prompt, [ex.image], {"method": "divprune", "budget": b})],
                              greedy(TOKENS))[0]
        assert (list(out.prompt_token_ids), list(out.outputs[0].token_ids)) == expected[b]


def test_prompt_conditioned_selection_keyed_by_prompt(engine, record):
    """CDPruner reads the prompt: the same image under two prompts is selected twice (the
    encoder cache must not hand the first prompt's selection to the second)."""
    exs = examples(3)
    img = exs[0].image
    opts = {"method": "cdpruner", "budget": 12}
    engine.generate([request("<image> " + exs[1].question, [img], opts)], greedy(2))
    engine.generate([request("<image> " + exs[2].question, [img], opts)], greedy(2))
    rec = record()
    assert len(rec) == 2


def test_bad_request_option_is_a_clear_error(engine):
    ex = examples(1)[0]
    with pytest.raises(ValueError, match="divprune"):
        engine.generate([request("<image> " + ex.question, [ex.image], {"method": "fastv"})],
                        greedy(2))
    with pytest.raises(ValueError, match="budget"):
        engine.generate([request("<image> " + ex.question, [ex.image],
                                 {"method": "divprune", "budget": 0})], greedy(2))
    for method in ("vidcom2", "dycoke", "fastvid"):     # no frames here: they run on Qwen-VL
        with pytest.raises(ValueError, match="Qwen2_5_VLForConditionalGeneration"):
            engine.generate([request("<image> " + ex.question, [ex.image], {"method": method})],
                            greedy(2))


def test_image_embeddings_run_unpruned_with_a_log_line(engine, tiny, caplog):
    ex = examples(1)[0]
    prompt = "<image> " + ex.question
    feats = tiny.features(ex.image)
    with caplog.at_level(logging.WARNING, logger="vtp_compile.serving.vllm"):
        out = engine.generate([{"prompt": prompt, "multi_modal_data": {"image": feats[None]},
                                "mm_processor_kwargs": {"vtp": {"method": "divprune", "budget": 8}}}],
                              greedy(TOKENS))[0]
    assert sum(t == tiny.image_token for t in out.prompt_token_ids) == V
    ids, ref = tiny.reference(prompt, [feats], TOKENS)
    assert list(out.outputs[0].token_ids) == ref
    assert any("not pruned" in r.getMessage() for r in caplog.records)


def test_chunked_prefill_across_pruned_images(engine_chunked, tiny):
    """Chunked prefill is on by default; with 64-token chunks the two pruned image runs of this
    136-token prompt straddle chunk boundaries. Tokens equal transformers."""
    sched = engine_chunked.llm_engine.vllm_config.scheduler_config
    assert sched.enable_chunked_prefill and sched.max_num_batched_tokens == 64
    exs = examples(3)
    prompt = (" ".join([exs[1].question] * 3) + " <image> " + " ".join([exs[0].question] * 4)
              + " <image> " + exs[2].question)
    images = [exs[0].image, exs[1].image]
    opts = {"method": "divprune", "budget": 40}
    out = engine_chunked.generate([request(prompt, images, opts)], greedy(TOKENS))[0]
    spec = options.parse(opts)
    ids, ref = tiny.reference(prompt, [select_image(spec, tiny.features(im))[1] for im in images], TOKENS)
    assert len(ids) > 2 * 64
    starts = [i for i, t in enumerate(ids) if t == tiny.image_token and ids[i - 1] != tiny.image_token]
    assert any(s < 64 < s + 40 or s < 128 < s + 40 for s in starts)   # a run crosses a chunk edge
    assert list(out.prompt_token_ids) == ids
    assert list(out.outputs[0].token_ids) == ref
