"""VisionZip end to end: options, oracle equivalence (forward with the vision tower in the
graph, generate where it runs eagerly) against the mask oracle, keep-all and text-only identity,
Inductor, explain."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import vtp_compile
from vtp_compile.config import PruneConfig
from vtp_compile.methods.registry import get_method
from vtp_compile.sites import EncoderSite
from vtp_compile.testing.oracle_mask import Pruning
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import (assert_text_only_is_identity, check_forward_batches, check_generate,
                       compiled_logits, mask_oracle_logits, options, valid)
from ..strategies import NO_SHRINK, varied, prompt_batches

SETTINGS = dict(phases=NO_SHRINK)


def test_defaults_and_registry():
    assert "visionzip" in vtp_compile.available_methods()
    cfg = PruneConfig.from_options({"method": "visionzip", "budget": 64})
    (site,) = get_method("visionzip").sites(cfg, 32)
    assert isinstance(site, EncoderSite) and site.context and site.vision_layer is None
    assert cfg.params == {"contextual": 0.15625, "score": "cls", "vision_layer": None}


@pytest.mark.parametrize("bad, match", [
    ({"contextual": 1.0}, "'contextual' must be a number in"),
    ({"score": "mean"}, "'score' must be one of"),
    ({"vision_layer": "x"}, "'vision_layer' must be an int"),
])
def test_bad_options_are_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig.from_options({"method": "visionzip", "budget": 16, **bad})


@st.composite
def cases(draw):
    spec = TinySpec(image_size=draw(st.sampled_from([24, 32])), layers=2, seed=draw(st.integers(0, 50)))
    batch = draw(prompt_batches(max_text=6))
    budget = draw(st.sampled_from([2, spec.visual_tokens // 2, spec.visual_tokens - 1]))
    params = draw(st.sampled_from([{}, {"score": "received"}, {"contextual": 0.4}]))
    return spec, {**batch, "tiles": None}, budget, params


def _model(spec):
    torch._dynamo.reset()
    return vtp_compile.attach(tiny_llava(spec))


@settings(max_examples=2, **SETTINGS)
@given(varied(cases()))
def test_forward_equals_mask_oracle(case):
    """Direct forward, ragged rows, either padding side: internals from the graph."""
    spec, batch, budget, params = case
    check_forward_batches(spec, [batch], options("visionzip", budget=budget, **params),
                          Pruning("visionzip", budget=budget, **params), model=_model(spec))


def test_generate_equals_mask_oracle_with_left_padding():
    """generate: transformers encodes the images eagerly; attach's record is used."""
    spec = TinySpec(image_size=32, layers=2, seed=3)
    check_generate(spec, dict(batch=2, pad=(0, 2), prefix=2, suffix=3), options("visionzip", budget=6),
                   Pruning("visionzip", budget=6), model=_model(spec))


@pytest.mark.parametrize("params", [{}, {"score": "received"}])
def test_full_strategy_equals_mask_oracle(params):
    """vision_feature_select_strategy="full": the CLS token is a visual token ranked like a patch."""
    spec = TinySpec(image_size=32, layers=2, seed=4, strategy="full")
    check_generate(spec, dict(batch=2, pad=(0, 2), prefix=2, suffix=3),
                   options("visionzip", budget=6, **params), Pruning("visionzip", budget=6, **params),
                   n=2, model=_model(spec))


def test_the_oracle_merge_is_live():
    """With targets, the oracle's logits differ from keeping the same tokens unmerged, so the
    forward cases (contextual 5/32 and 0.4) check the merge, not only the selection."""
    spec = TinySpec(image_size=32, layers=2)
    model = _model(spec)
    inputs = make_inputs(spec, batch=1)
    want, kept = mask_oracle_logits(model, inputs, Pruning("visionzip", budget=8, contextual=0.5))
    plain, kept2 = mask_oracle_logits(model, inputs, Pruning("visionzip", budget=8, contextual=0.5, merge=False))
    assert kept == kept2 and not torch.allclose(plain, want, atol=1e-3)


def test_keep_all_is_identity():
    spec = TinySpec(image_size=24, layers=2)
    model = _model(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    with torch.no_grad():
        ref = model(**inputs).logits
    got = compiled_logits(model, inputs, options("visionzip", ratio=1.0))
    torch.testing.assert_close(got[valid(inputs)], ref[valid(inputs)], atol=1e-5, rtol=1e-5)


def test_text_only_is_identity():
    spec = TinySpec(layers=2)
    assert_text_only_is_identity(_model(spec), spec, options("visionzip", budget=2))


def test_another_vision_layer_needs_attach_for_it():
    spec = TinySpec(layers=2, vision_layers=3)
    model = _model(spec)
    inputs = make_inputs(spec)
    with pytest.raises(Exception, match="vision_layer=-1"):
        compiled_logits(model, inputs, options("visionzip", budget=4, vision_layer=-1))


def test_explain_reports_the_oracle_selection_and_savings():
    spec = TinySpec(image_size=48, layers=2)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    (site,) = vtp_compile.explain(model, inputs, {"method": "visionzip", "budget": 9}).sites
    assert (site.name, site.layer, site.visual_count, site.kept) == ("visionzip", None, 36, 9)
    assert 0 < site.flops_saved < site.flops_total and site.kv_bytes_saved > 0
    assert not model._forward_pre_hooks                      # explain detached again
    _, kept = mask_oracle_logits(model, inputs, Pruning("visionzip", budget=9))
    vis = [torch.nonzero(r).flatten().tolist() for r in inputs["input_ids"] == spec.image_token_id]
    assert [[v.index(p) for p in k] for k, v in zip(kept, vis)] == site.kept_visual_index.tolist()


def test_packed_anyres_features_are_left_unpruned_and_say_why():
    """LLaVA-NeXT packs crops with newline tokens: the splice holds no feature per vision patch,
    so per-patch scores cannot be placed; the prefill runs unpruned (never a misplaced score)."""
    from tests.helpers import REPORTS
    from vtp_compile.testing import families as F
    torch._dynamo.reset()
    model = vtp_compile.attach(F.build_model("llava_next"))
    inputs = F.make_inputs("llava_next", model, [F.RowSpec(3, 4, (F.ImageSpec(),))] * 2, padding_side="left")
    start = len(REPORTS)
    with torch.no_grad():
        want = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        model.compile(backend="vtp", options=options("visionzip", budget=3))
        got = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert torch.equal(got, want)
    assert any("per-patch vision internals" in (r.skipped or "") for r in REPORTS[start:])


def test_chain_visionzip_then_fastv_equals_the_mask_oracle():
    """The issue's example chain: VisionZip at the encoder, FastV deeper, each with its budget."""
    spec = TinySpec(image_size=32, layers=3, seed=2)
    opts = {"method": "chain", "inner_backend": "eager",
            "stages": [{"method": "visionzip", "budget": 8, "contextual": 0.25},
                       {"method": "fastv", "budget": 3, "layer": 2}]}
    pruning = Pruning("chain", chain=(Pruning("visionzip", budget=8, contextual=0.25),
                                      Pruning("fastv", budget=3, layer=2)))
    check_forward_batches(spec, [dict(batch=2, pad=(0, 2))], opts, pruning, model=_model(spec))
