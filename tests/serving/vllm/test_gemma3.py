"""vLLM's Gemma 3 with the plugin, against transformers and against vtp's transformers path.

The tiny model (``vtp_compile.testing.vllm_models.build_gemma3``): 64 px images, 16 x 16 SigLIP
patches average-pooled to ``V = 64`` soft tokens, a text model with one sliding-window layer
(a window of 24 tokens, shorter than every prompt here, pruned or not) and one global layer.

**Positions and attention of the kept tokens.** A pruned image is ``\\n\\n<start_of_image>``,
its ``n_keep`` kept soft tokens in their original order, ``<end_of_image>\\n\\n``; every token is
numbered by its index in the pruned prompt (vLLM's 1-D positions: the kept tokens are
consecutive, the text after the image moves up by ``V - n_keep``). Transformers' Gemma 3 lets an
image's soft tokens attend to each other (``token_type_ids``); vLLM marks Gemma 3 a prefix-LM
for images and hands its attention backend each image's embedding range, which with the plugin
is the kept run, but vLLM 0.32's CPU backend (``CPU_ATTN``) ignores those ranges: on CPU the
image is attended causally, pruned or not. The reference is therefore causal
(``gemma3_support.TinyGemma3.reference``), and ``test_unpruned_matches_transformers`` checks that
the bidirectional reference gives other tokens (so the comparison tells the two apart).
``test_bidirectional_range_is_the_kept_run`` checks the range vLLM's GPU backends would make
bidirectional: the kept soft tokens, markers excluded.
"""
from __future__ import annotations

import pytest
import torch

from vtp_compile.serving.vllm import options
from vtp_compile.serving.vllm.selection import select_image
from vtp_compile.serving.vllm.support import VIDEO

from .gemma3_support import IMAGE
from .support import examples, greedy, request

pytestmark = pytest.mark.vllm

V = 64
TOKENS = 5
SELECT_CASES = [
    {"method": "divprune", "budget": 16},
    {"method": "random", "ratio": 0.25, "seed": 3},
    {"method": "cdpruner", "budget": 12},
    {"method": "acgr", "site": "encoder", "budget": 16, "merge": False},
    {"method": "acgr", "site": "encoder", "budget": 10},     # merges the dropped into the kept
]
INTERNALS = ("visionzip", "nuwa")                           # refused: average-pooled patches


def _ids(opts):
    return "-".join(f"{k}={v}" for k, v in opts.items())


def _text_around(tiny, prompt):
    """The prompt's token embeddings before and after its one image's soft tokens (markers
    included), as the plugin hands them to prompt-conditioned methods."""
    ids = tiny.prompt_ids(prompt, [V])
    soft = [i for i, t in enumerate(ids) if t == tiny.image_token]
    emb = tiny.model.get_input_embeddings()
    with torch.no_grad():
        return emb(torch.tensor(ids[:soft[0]])), emb(torch.tensor(ids[soft[-1] + 1:]))


def _kept_features(tiny, prompt, image, opts):
    """``(kept indices, kept features)`` of ``image`` under ``opts`` from transformers' features
    (merged as the method merges)."""
    spec = options.parse(opts)
    feats = tiny.features(image)
    if spec is None:
        return list(range(V)), feats
    before, after = _text_around(tiny, prompt) if spec.text else (None, None)
    idx, kept = select_image(spec, feats, before=before, after=after)
    return idx.tolist(), kept


def test_support_table_is_what_is_tested():
    from vtp_compile.serving.vllm.support import CHECKED, REFUSED
    assert set(CHECKED["gemma3"]) == {o["method"] for o in SELECT_CASES}
    assert set(REFUSED["gemma3"]) == set(INTERNALS) | set(VIDEO)


def test_unpruned_matches_transformers(engine_gemma3, tiny_gemma3):
    """Unpruned: the processor's prompt ids, and greedy tokens equal to transformers with causal
    attention, not to transformers with the image attended bidirectionally (on this image the
    two references differ)."""
    ex = examples(4)[3]
    prompt = f"{IMAGE} {ex.question}"
    out = engine_gemma3.generate([request(prompt, [ex.image])], greedy(TOKENS))[0]
    feats = tiny_gemma3.features(ex.image)
    ids, ref = tiny_gemma3.reference(prompt, [feats], TOKENS)
    assert tiny_gemma3.visual_tokens == V and feats.shape[0] == V
    assert list(out.prompt_token_ids) == ids
    assert list(out.outputs[0].token_ids) == ref
    _, bidi = tiny_gemma3.reference(prompt, [feats], TOKENS, bidirectional=True)
    assert bidi != ref


@pytest.mark.parametrize("opts", SELECT_CASES, ids=_ids)
def test_pruned_matches_transformers_path(engine_gemma3, tiny_gemma3, record, opts):
    """Kept indices equal vtp's transformers path (explain) for the same image and options;
    the prompt keeps the markers around the cut run; greedy tokens equal transformers fed the
    kept (for ACGR: merged) features with vLLM's positions and attention."""
    import vtp_compile
    ex = examples(2)[1]
    prompt = f"{ex.question} {IMAGE} {ex.question}"
    out = engine_gemma3.generate([request(prompt, [ex.image], opts)], greedy(TOKENS))[0]
    rec = record()
    assert len(rec) == 1 and rec[0]["visual"] == V
    inputs = dict(tiny_gemma3.hf_inputs(prompt, [ex.image]))
    kept = vtp_compile.explain(tiny_gemma3.model, inputs, opts).sites[0].kept_visual_index[0].tolist()
    assert rec[0]["kept"] == kept
    idx, feats = _kept_features(tiny_gemma3, prompt, ex.image, opts)
    assert idx == kept and len(kept) == options.parse(opts).n_keep(V)
    ids, ref = tiny_gemma3.reference(prompt, [feats], TOKENS)
    assert list(out.prompt_token_ids) == ids
    tok = tiny_gemma3.processor.tokenizer
    at = ids.index(tok.boi_token_id)
    assert ids[at + 1:at + 2 + len(kept)] == [tiny_gemma3.image_token] * len(kept) + [tok.eoi_token_id]
    assert list(out.outputs[0].token_ids) == ref


def test_bidirectional_range_is_the_kept_run(engine_gemma3, tiny_gemma3):
    """The range vLLM's runner hands a prefix-LM attention backend for a pruned image
    (``extract_embeds_range`` of its placeholder) is exactly the kept soft tokens."""
    from vllm.multimodal import MULTIMODAL_REGISTRY
    proc = MULTIMODAL_REGISTRY.create_processor(engine_gemma3.llm_engine.vllm_config.model_config)
    ex = examples(1)[0]
    prompt = f"{ex.question} {IMAGE} {ex.question}"
    got = proc(prompt, proc.info.parse_mm_data({"image": [ex.image]}),
               hf_processor_mm_kwargs={"vtp": {"method": "divprune", "budget": 9}})
    ids = list(got["prompt_token_ids"])
    (rng,) = got["mm_placeholders"]["image"]
    soft = [i for i, t in enumerate(ids) if t == tiny_gemma3.image_token]
    assert len(soft) == 9 and rng.extract_embeds_range() == [(soft[0], soft[-1])]
    tok = tiny_gemma3.processor.tokenizer
    assert ids[soft[0] - 1] == tok.boi_token_id and ids[soft[-1] + 1] == tok.eoi_token_id


def test_batch_of_images_budgets_and_keep_all(engine_gemma3, tiny_gemma3, record):
    """Requests with different images, image counts and budgets in one generate call, one
    without ``vtp`` and one keep-all: each equals transformers with its own selection."""
    exs = examples(4)
    cases = [
        (f"{exs[1].question} {IMAGE} {exs[0].question}", [exs[0].image],
         {"method": "divprune", "budget": 8}),
        (f"{IMAGE} {exs[1].question} {IMAGE} {exs[2].question}", [exs[1].image, exs[2].image],
         {"method": "random", "budget": 20}),
        (f"{IMAGE} {exs[3].question}", [exs[3].image], None),
        (f"{IMAGE} {exs[2].question}", [exs[2].image], {"method": "cdpruner", "budget": 30}),
        (f"{IMAGE} {exs[0].question}", [exs[0].image], {"method": "divprune", "ratio": 1.0}),
    ]
    outs = engine_gemma3.generate([request(p, ims, o) for p, ims, o in cases], greedy(TOKENS))
    rec = record()
    assert len(rec) == 5 and all(r["visual"] == V for r in rec)
    assert sum(r["kept"] == list(range(V)) for r in rec) == 1
    for (prompt, images, opts), out in zip(cases, outs):
        kept = [_kept_features(tiny_gemma3, prompt, im, opts)[1] for im in images]
        ids, ref = tiny_gemma3.reference(prompt, kept, TOKENS)
        assert list(out.prompt_token_ids) == ids, prompt
        assert list(out.outputs[0].token_ids) == ref, prompt
    plain = engine_gemma3.generate([request(cases[4][0], cases[4][1])], greedy(TOKENS))[0]
    assert list(outs[4].outputs[0].token_ids) == list(plain.outputs[0].token_ids)


def test_refused_options_are_clear_errors(engine_gemma3):
    ex = examples(1)[0]
    prompt = f"{IMAGE} {ex.question}"
    for method in INTERNALS:
        with pytest.raises(ValueError, match="average-pools patches.*random, divprune, cdpruner"):
            engine_gemma3.generate([request(prompt, [ex.image], {"method": method, "budget": 8})],
                                   greedy(2))
    for method in VIDEO:                                  # no frames: they run on Qwen-VL
        with pytest.raises(ValueError, match="Qwen2_5_VLForConditionalGeneration"):
            engine_gemma3.generate([request(prompt, [ex.image], {"method": method})], greedy(2))
    r = request(prompt, [ex.image], {"method": "divprune", "budget": 8})
    r["mm_processor_kwargs"]["do_pan_and_scan"] = True
    with pytest.raises(ValueError, match="pan-and-scan"):
        engine_gemma3.generate([r], greedy(2))


def test_engine_wide_pan_and_scan_fails_at_start_up():
    """The model's start-up check (no engine needed: the check reads the engine's kwargs)."""
    from types import SimpleNamespace

    from vtp_compile.errors import OptionError
    from vtp_compile.serving.vllm.gemma3 import VtpGemma3ForConditionalGeneration as Model
    spec = options.parse({"method": "divprune", "budget": 8})
    model = SimpleNamespace(multimodal_config=SimpleNamespace(mm_processor_kwargs={"do_pan_and_scan": True}))
    with pytest.raises(OptionError, match="pan-and-scan"):
        Model._vtp_check_engine(model, spec)
    Model._vtp_check_engine(SimpleNamespace(multimodal_config=SimpleNamespace(mm_processor_kwargs={})), spec)
    with pytest.raises(OptionError, match="average-pools"):
        Model._vtp_check_engine(model, options.parse({"method": "visionzip", "budget": 8}))
