"""vLLM's Idefics3 (and SmolVLM, the same vLLM processor and model) with the plugin, against
transformers and against vtp's transformers path.

The tiny model (``vtp_compile.testing.vllm_idefics3``): 96 px tiles, 12 x 12 patches
pixel-shuffled into ``V = 36`` tokens per tile, a Llama decoder. The engines run with
``do_image_splitting=False`` (one tile, one run per image), what the plugin serves; splitting is
refused. A pruned image is ``<fake_token_around_image><global-img>``, its ``n_keep`` kept
features in their original order, ``<fake_token_around_image>``, numbered by index in the pruned
prompt (see support.py); the reference is transformers with the run cut the same way.
"""
from __future__ import annotations

import pytest
import torch

from vtp_compile.serving.vllm import options
from vtp_compile.serving.vllm.selection import select_image
from vtp_compile.serving.vllm.support import VIDEO

from .idefics3_support import IMAGE
from .support import examples, greedy, request

pytestmark = pytest.mark.vllm

V = 36
TOKENS = 4
SELECT_CASES = [
    {"method": "random", "ratio": 0.25, "seed": 3},
    {"method": "divprune", "budget": 9},
    {"method": "cdpruner", "budget": 12},
    {"method": "acgr", "site": "encoder", "budget": 10, "merge": False},
    {"method": "acgr", "site": "encoder", "budget": 8},      # merges the dropped into the kept
]
INTERNALS = ("visionzip", "nuwa")                           # refused: pixel shuffle, no CLS


def _ids(opts):
    return "-".join(f"{k}={v}" for k, v in opts.items())


def _text_around(tiny, prompt):
    """The prompt's token embeddings before and after its one image's ``<image>`` slots
    (markers included), as the plugin hands them to prompt-conditioned methods."""
    ids = tiny.hf_inputs(prompt, [examples(1)[0].image])["input_ids"][0].tolist()
    slots = [i for i, t in enumerate(ids) if t == tiny.image_token]
    emb = tiny.model.get_input_embeddings()
    with torch.no_grad():
        return emb(torch.tensor(ids[:slots[0]])), emb(torch.tensor(ids[slots[-1] + 1:]))


def _kept_features(tiny, prompt, image, opts):
    """``(kept indices, kept features)`` of ``image`` under ``opts`` from transformers' features."""
    spec = options.parse(opts)
    feats = tiny.features(image)
    if spec is None:
        return list(range(V)), feats
    before, after = _text_around(tiny, prompt) if spec.text else (None, None)
    idx, kept = select_image(spec, feats, before=before, after=after)
    return idx.tolist(), kept


def test_support_table_is_what_is_tested():
    from vtp_compile.serving.vllm.support import CHECKED, REFUSED
    assert set(CHECKED["idefics3"]) == {o["method"] for o in SELECT_CASES}
    assert set(REFUSED["idefics3"]) == set(INTERNALS) | set(VIDEO)
    assert set(CHECKED["smolvlm"]) == {"divprune"}


def test_unpruned_matches_transformers(engine_idefics3, tiny_idefics3):
    """Unpruned: the HF processor's prompt ids (markers, one run of ``V`` slots) and greedy
    tokens equal to transformers."""
    ex = examples(4)[3]
    prompt = f"{ex.question} {IMAGE} {ex.question}"
    out = engine_idefics3.generate([request(prompt, [ex.image])], greedy(TOKENS))[0]
    feats = tiny_idefics3.features(ex.image)
    ids, ref = tiny_idefics3.reference(prompt, [feats], TOKENS)
    assert feats.shape[0] == V
    assert ids == tiny_idefics3.hf_inputs(prompt, [ex.image])["input_ids"][0].tolist()
    assert list(out.prompt_token_ids) == ids
    assert list(out.outputs[0].token_ids) == ref


@pytest.mark.parametrize("opts", SELECT_CASES, ids=_ids)
def test_pruned_matches_transformers_path(engine_idefics3, tiny_idefics3, record, opts):
    """Kept indices equal vtp's transformers path (explain); the prompt keeps the markers around
    the cut run; greedy tokens equal transformers fed the kept (for ACGR: merged) features."""
    import vtp_compile
    ex = examples(2)[1]
    prompt = f"{ex.question} {IMAGE} {ex.question}"
    out = engine_idefics3.generate([request(prompt, [ex.image], opts)], greedy(TOKENS))[0]
    rec = record()
    assert len(rec) == 1 and rec[0]["visual"] == V
    inputs = dict(tiny_idefics3.hf_inputs(prompt, [ex.image]))
    kept = vtp_compile.explain(tiny_idefics3.model, inputs, opts).sites[0].kept_visual_index[0].tolist()
    assert rec[0]["kept"] == kept
    idx, feats = _kept_features(tiny_idefics3, prompt, ex.image, opts)
    assert idx == kept and len(kept) == options.parse(opts).n_keep(V)
    ids, ref = tiny_idefics3.reference(prompt, [feats], TOKENS)
    assert list(out.prompt_token_ids) == ids
    fake, glob = tiny_idefics3.markers
    at = ids.index(fake)
    assert ids[at:at + 3 + len(kept)] == [fake, glob] + [tiny_idefics3.image_token] * len(kept) + [fake]
    assert list(out.outputs[0].token_ids) == ref


def test_batch_of_images_budgets_and_keep_all(engine_idefics3, tiny_idefics3, record):
    """Requests with different images, image counts and budgets in one generate call, one
    without ``vtp`` and one keep-all: each equals transformers with its own selection."""
    exs = examples(4)
    cases = [
        (f"{exs[1].question} {IMAGE} {exs[0].question}", [exs[0].image],
         {"method": "divprune", "budget": 6}),
        (f"{IMAGE} {exs[1].question} {IMAGE} {exs[2].question}", [exs[1].image, exs[2].image],
         {"method": "random", "budget": 14}),
        (f"{IMAGE} {exs[3].question}", [exs[3].image], None),
        (f"{IMAGE} {exs[2].question}", [exs[2].image], {"method": "cdpruner", "budget": 20}),
        (f"{IMAGE} {exs[0].question}", [exs[0].image], {"method": "divprune", "ratio": 1.0}),
    ]
    outs = engine_idefics3.generate([request(p, ims, o) for p, ims, o in cases], greedy(TOKENS))
    rec = record()
    assert len(rec) == 5 and all(r["visual"] == V for r in rec)
    assert sum(r["kept"] == list(range(V)) for r in rec) == 1
    for (prompt, images, opts), out in zip(cases, outs):
        kept = [_kept_features(tiny_idefics3, prompt, im, opts)[1] for im in images]
        ids, ref = tiny_idefics3.reference(prompt, kept, TOKENS)
        assert list(out.prompt_token_ids) == ids, prompt
        assert list(out.outputs[0].token_ids) == ref, prompt
    plain = engine_idefics3.generate([request(cases[4][0], cases[4][1])], greedy(TOKENS))[0]
    assert list(outs[4].outputs[0].token_ids) == list(plain.outputs[0].token_ids)


def test_refused_options_are_clear_errors(engine_idefics3):
    ex = examples(1)[0]
    prompt = f"{IMAGE} {ex.question}"
    for method in INTERNALS:
        with pytest.raises(ValueError, match="pixel-shuffles.*random, divprune, cdpruner"):
            engine_idefics3.generate([request(prompt, [ex.image], {"method": method, "budget": 8})],
                                     greedy(2))
    for method in VIDEO:                                  # no frames: they run on Qwen-VL
        with pytest.raises(ValueError, match="Qwen2_5_VLForConditionalGeneration"):
            engine_idefics3.generate([request(prompt, [ex.image], {"method": method})], greedy(2))
    r = request(prompt, [ex.image], {"method": "divprune", "budget": 8})
    r["mm_processor_kwargs"]["do_image_splitting"] = True
    with pytest.raises(ValueError, match="image splitting.*'do_image_splitting': False"):
        engine_idefics3.generate([r], greedy(2))


def test_engine_wide_splitting_fails_at_start_up(tiny_idefics3):
    """The model's start-up check: splitting on (explicitly, or by the checkpoint's default
    when the key is absent) is refused; off runs."""
    from types import SimpleNamespace

    from vtp_compile.errors import OptionError
    from vtp_compile.serving.vllm.idefics3 import VtpIdefics3ForConditionalGeneration as Model
    spec = options.parse({"method": "divprune", "budget": 8})

    def model(kwargs, default=True):
        return SimpleNamespace(multimodal_config=SimpleNamespace(mm_processor_kwargs=kwargs),
                               _vtp_default_splitting=lambda: default)
    with pytest.raises(OptionError, match="do_image_splitting"):
        Model._vtp_check_engine(model({"do_image_splitting": True}, default=False), spec)
    with pytest.raises(OptionError, match="do_image_splitting"):
        Model._vtp_check_engine(model({}), spec)
    Model._vtp_check_engine(model({}, default=False), spec)
    Model._vtp_check_engine(model({"do_image_splitting": False}), spec)
    with pytest.raises(OptionError, match="pixel-shuffles"):
        Model._vtp_check_engine(model({"do_image_splitting": False}),
                                options.parse({"method": "visionzip", "budget": 8}))


def test_encoder_cuda_graphs_skip_images(tiny_idefics3):
    """vLLM's encoder CUDA-graph path (GPU, opt-in) calls the tower without embed_multimodal:
    the adapter lists no modality for it, so images always go through the pruning path."""
    from types import SimpleNamespace

    from vtp_compile.serving.vllm.idefics3 import VtpIdefics3ForConditionalGeneration as Model
    cfg = Model.get_encoder_cudagraph_config(SimpleNamespace(config=tiny_idefics3.model.config))
    assert cfg.modalities == [] and cfg.out_hidden_size == tiny_idefics3.model.config.text_config.hidden_size


def test_smolvlm_unpruned_and_divprune(engine_smolvlm, tiny_smolvlm, record):
    """SmolVLM (vLLM's Idefics3 processor and model with SmolVLM's HF processor): unpruned and
    divprune equal transformers. The kept indices are compared with the selection on
    transformers' features (:func:`select_image`, what ``explain`` computes for Idefics3 above):
    vtp's transformers path finds no visual tokens in SmolVLM's forward on transformers 5.19
    (``explain`` reports ``visual_count=0``; SmolVLM splices with ``torch.where``, not
    ``masked_scatter``)."""
    ex = examples(2)[1]
    prompt = f"{ex.question} {IMAGE} {ex.question}"
    opts = {"method": "divprune", "budget": 9}
    plain, pruned = engine_smolvlm.generate([request(prompt, [ex.image]),
                                             request(prompt, [ex.image], opts)], greedy(TOKENS))
    feats = tiny_smolvlm.features(ex.image)
    ids, ref = tiny_smolvlm.reference(prompt, [feats], TOKENS)
    assert ids == tiny_smolvlm.hf_inputs(prompt, [ex.image])["input_ids"][0].tolist()
    assert list(plain.prompt_token_ids) == ids and list(plain.outputs[0].token_ids) == ref
    (rec,) = record()
    idx, kf = _kept_features(tiny_smolvlm, prompt, ex.image, opts)
    assert rec["visual"] == V and rec["kept"] == idx and len(idx) == 9
    ids, ref = tiny_smolvlm.reference(prompt, [kf], TOKENS)
    assert list(pruned.prompt_token_ids) == ids and list(pruned.outputs[0].token_ids) == ref
