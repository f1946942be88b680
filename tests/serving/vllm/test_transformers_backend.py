"""vLLM's Transformers modeling backend (``model_impl="transformers"``) with the plugin: the tiny
LLaVA run by the backend's ``TransformersMultiModalForCausalLM`` (vtp's subclass), against
transformers and against vtp's transformers path; refusals checked on the backend's processor
(tiled Idefics3, M-RoPE Qwen2.5-VL: no engine needed).

The backend engine lives in this process beside the session's engines of vLLM's own classes;
it changes transformers' classes while it is built, which conftest's ``engine_hf`` undoes
(support.transformers_classes_kept).
"""
from __future__ import annotations

import json

import pytest
import torch

from vtp_compile.serving.vllm import options
from vtp_compile.serving.vllm.selection import select_image

from .support import MAX_LEN, examples, greedy, request
from .test_llava import _explain_kept

pytestmark = pytest.mark.vllm

V = 196
TOKENS = 6
CASES = [
    {"method": "random", "ratio": 0.1, "seed": 3},
    {"method": "divprune", "budget": 16},
    {"method": "cdpruner", "budget": 24},
    {"method": "acgr", "site": "encoder", "budget": 12},      # selects, then merges the rest in
]
REFUSED = {"visionzip": "transformers' own tower", "nuwa": "transformers' own tower",
           "vidcom2": "reads each token's video frame", "dycoke": "reads each token's video frame",
           "fastvid": "reads each token's video frame"}


def _text_around(tiny, prompt):
    ids = tiny.processor.tokenizer(prompt)["input_ids"]
    at = ids.index(tiny.image_token)
    emb = tiny.model.get_input_embeddings()
    with torch.no_grad():
        return emb(torch.tensor(ids[:at])), emb(torch.tensor(ids[at + 1:]))


def _expected(tiny, prompt, images, opts):
    """Transformers' prompt ids and greedy tokens, each image cut to its own selection."""
    spec = options.parse(opts)
    feats = []
    for im in images:
        f = tiny.features(im)
        if spec is not None:
            before, after = _text_around(tiny, prompt) if spec.text else (None, None)
            f = select_image(spec, f, before=before, after=after)[1]
        feats.append(f)
    return tiny.reference(prompt, feats, TOKENS)


def test_support_table_is_what_is_tested():
    from vtp_compile.serving.vllm.support import CHECKED, REFUSED as TABLE
    assert set(CHECKED["transformers_backend"]) == {o["method"] for o in CASES}
    assert set(TABLE["transformers_backend"]) == set(REFUSED)


def test_backend_runs_vtps_class(engine_hf):
    """vLLM resolves the backend by class name; the registry hands it vtp's subclass, whose
    ``__name__`` is vLLM's (so ``using_transformers_backend`` still holds)."""
    from vtp_compile.serving.vllm import transformers_backend
    cfg = engine_hf.llm_engine.model_config
    assert cfg.using_transformers_backend()
    assert engine_hf.apply_model(
        lambda m: isinstance(m, transformers_backend.TransformersMultiModalForCausalLM)) == [True]


def test_unpruned_matches_transformers(engine_hf, tiny, record):
    ex = examples(1)[0]
    prompt = "<image> " + ex.question
    out = engine_hf.generate([request(prompt, [ex.image])], greedy(TOKENS))[0]
    assert record() == []
    assert (list(out.prompt_token_ids), list(out.outputs[0].token_ids)) == \
        _expected(tiny, prompt, [ex.image], None)


@pytest.mark.parametrize("opts", CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_pruned_matches_transformers_path(engine_hf, tiny, record, opts):
    """Kept indices equal vtp's transformers path (explain); prompt ids and greedy tokens equal
    transformers fed the kept (for acgr: merged) features at positions 0..L-1."""
    ex = examples(2)[1]
    prompt = "<image> " + ex.question
    out = engine_hf.generate([request(prompt, [ex.image], opts)], greedy(TOKENS))[0]
    rec = record()
    assert len(rec) == 1 and rec[0]["visual"] == V
    kept = _explain_kept(tiny, ex, opts)
    assert rec[0]["kept"] == kept
    assert len(kept) == options.parse(opts).n_keep(V)
    ids, ref = _expected(tiny, prompt, [ex.image], opts)
    assert sum(t == tiny.image_token for t in out.prompt_token_ids) == len(kept)
    assert list(out.prompt_token_ids) == ids
    assert list(out.outputs[0].token_ids) == ref


def test_batch_of_images_budgets_and_keep_all(engine_hf, tiny, record):
    """One generate call: different images and budgets, two images in one prompt, a request
    without ``vtp`` and one that keeps all (``ratio: 1.0``, the unpruned prompt and tokens)."""
    exs = examples(4)
    cases = [
        ("<image> " + exs[0].question, [exs[0].image], {"method": "divprune", "budget": 8}),
        ("<image> <image> " + exs[1].question, [exs[1].image, exs[2].image],
         {"method": "divprune", "ratio": 0.25}),
        ("<image> " + exs[3].question, [exs[3].image], None),
        ("<image> " + exs[2].question + " <image>", [exs[2].image, exs[0].image],
         {"method": "random", "budget": 30}),
        ("<image> " + exs[0].question, [exs[0].image], {"method": "divprune", "ratio": 1.0}),
    ]
    outs = engine_hf.generate([request(p, ims, o) for p, ims, o in cases], greedy(TOKENS))
    rec = record()
    assert sorted(len(r["kept"]) for r in rec) == sorted([8, 49, 49, 30, 30, V])
    assert [r["kept"] for r in rec if len(r["kept"]) == V] == [list(range(V))]
    for (prompt, images, opts), out in zip(cases, outs):
        assert (list(out.prompt_token_ids), list(out.outputs[0].token_ids)) == \
            _expected(tiny, prompt, images, opts), prompt
    assert list(outs[4].prompt_token_ids) == _expected(tiny, cases[4][0], cases[4][1], None)[0]


def test_same_as_vllms_own_llava_class(engine, engine_hf):
    """Both engines in one process: the same pruned requests give the same prompts and tokens
    on vLLM's own LLaVA class and on the Transformers backend."""
    exs = examples(3)
    reqs = [request("<image> " + exs[0].question, [exs[0].image], {"method": "divprune", "budget": 12}),
            request("<image> " + exs[1].question, [exs[1].image], {"method": "cdpruner", "budget": 10}),
            request("<image> " + exs[2].question, [exs[2].image])]
    a = engine.generate(reqs, greedy(TOKENS))
    b = engine_hf.generate(reqs, greedy(TOKENS))
    assert [(list(x.prompt_token_ids), list(x.outputs[0].token_ids)) for x in a] == \
        [(list(x.prompt_token_ids), list(x.outputs[0].token_ids)) for x in b]


@pytest.mark.parametrize("method", sorted(REFUSED))
def test_refused_methods(engine_hf, method):
    ex = examples(1)[0]
    with pytest.raises(ValueError, match=REFUSED[method]) as e:
        engine_hf.generate([request("<image> " + ex.question, [ex.image], {"method": method})],
                           greedy(2))
    assert "divprune" in str(e.value)


# -- the backend's processor alone (no engine) -------------------------------------------------

def _processor(path, **kw):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from vtp_compile.serving.vllm import register
    register()
    return MULTIMODAL_REGISTRY.create_processor(
        ModelConfig(model=str(path), model_impl="transformers", dtype="float32",
                    max_model_len=MAX_LEN, **kw))


def _apply(proc, prompt: str, images, vtp=None):
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs
    ids = proc.info.get_tokenizer()(prompt)["input_ids"]
    kwargs = {"vtp": vtp} if vtp is not None else {}
    return proc.apply(ProcessorInputs(ids, proc.info.parse_mm_data({"image": images}),
                                      hf_processor_mm_kwargs=kwargs), TimingContext(enabled=False))


def test_images_in_several_runs_are_refused(tiny_idefics3_tiled):
    """Idefics3's split images: each tile's tokens after a ``<row_i_col_j>`` label, so the slots
    are five runs; the plugin cannot tell how many each keeps before the tower runs."""
    from vtp_compile.errors import OptionError
    proc = _processor(tiny_idefics3_tiled.path)
    ex = examples(1)[0]
    plain = _apply(proc, "<image> " + ex.question, [ex.image])
    assert sum(t == tiny_idefics3_tiled.image_token for t in plain["prompt_token_ids"]) == 5 * 64
    with pytest.raises(OptionError, match="320 embedding slots in 5 runs"):
        _apply(proc, "<image> " + ex.question, [ex.image], {"method": "divprune", "budget": 8})


def test_mrope_models_are_refused(tiny_qwen):
    from vtp_compile.errors import OptionError
    from vtp_compile.testing.vllm_qwen import IMAGE
    proc = _processor(tiny_qwen.path)
    ex = examples(1)[0]
    with pytest.raises(OptionError, match="M-RoPE.*Qwen3-VL prune on vLLM's own classes"):
        _apply(proc, IMAGE + " " + ex.question, [ex.image], {"method": "divprune", "budget": 8})


def test_engine_wide_options_reach_the_processor(tiny):
    """Engine-wide ``vtp`` options: the processor cuts every image (the HF processor's token
    count, which vLLM hands the engine-wide kwargs too, is unchanged)."""
    proc = _processor(tiny.path, mm_processor_kwargs={"vtp": {"method": "divprune", "budget": 8}})
    assert proc.info.get_max_image_tokens() == V
    ex = examples(1)[0]
    out = _apply(proc, "<image> " + ex.question, [ex.image])
    assert sum(t == tiny.image_token for t in out["prompt_token_ids"]) == 8
    assert out["mm_placeholders"]["image"][0].length == 8


# -- a mixture-of-experts text model: the backend's other class ---------------------------------

@pytest.fixture(scope="session")
def tiny_moe(tmp_path_factory):
    from .support import Tiny
    return Tiny.make(tmp_path_factory.mktemp("tiny_llava_moe"), builder="build_moe")


@pytest.mark.vllm_slow     # a fresh engine process (about 40 s): make test-vllm-full
def test_moe_text_model(tiny_moe, tmp_path):
    """A LLaVA with a Mixtral text model resolves to vtp's ``TransformersMultiModalMoEForCausalLM``
    and prunes there. Its engine runs in a fresh process (run_engine.py): an in-process engine
    would join the distributed state the session's dense engines set up, which has no
    expert-parallel group ("expert parallel group is not initialized")."""
    from vllm.config import ModelConfig

    from vtp_compile.serving.vllm import register, transformers_backend

    from .test_engine_process import run
    register()
    cfg = ModelConfig(model=str(tiny_moe.path), model_impl="transformers", dtype="float32",
                      max_model_len=MAX_LEN)
    assert cfg.using_transformers_backend()
    cls, _ = cfg.registry.resolve_model_cls(cfg.architectures, cfg)
    assert issubclass(cls, transformers_backend.TransformersMultiModalMoEForCausalLM)

    ex = examples(4)[1]
    prompt = "<image> " + ex.question
    opts = {"method": "divprune", "budget": 16}
    rec = tmp_path / "kept.jsonl"
    p, got = run({"model": str(tiny_moe.path), "engine": {"model_impl": "transformers"},
                  "max_tokens": TOKENS, "requests": [{"prompt": prompt, "images": [1]},
                                                     {"prompt": prompt, "images": [1], "vtp": opts}]},
                 env={"VTP_VLLM_RECORD": str(rec)})
    assert got is not None, p.stderr[-3000:]
    # vtp_compile.explain prunes nothing on this Mixtral LLaVA (no sequence rule for its router's
    # ops); the selection on transformers' features is the op the dense cases check against it
    kept = select_image(options.parse(opts), tiny_moe.features(ex.image))[0].tolist()
    assert [json.loads(line)["kept"] for line in rec.read_text().splitlines()] == [kept]
    assert got == [list(_expected(tiny_moe, prompt, [ex.image], o)) for o in (None, opts)]
