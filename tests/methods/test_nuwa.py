"""Nüwa end to end: options, oracle equivalence on both paths (direct forward with the vision
tower in the graph; generate, where it runs eagerly), keep-all and text-only identity."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import vtp_compile
from vtp_compile.config import PruneConfig
from vtp_compile.methods.registry import get_method
from tests.helpers import REPORTS
from vtp_compile.sites import EncoderSite, LayerSite
from vtp_compile.testing import oracle_nuwa
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import assert_cache_holds, assert_keep_all_is_identity, assert_tokens_match, compiled_logits, options, valid

SETTINGS = dict(max_examples=4)


def test_defaults_and_sites():
    cfg = PruneConfig.from_options({"method": "nuwa", "budget": 64})
    s1, s2 = get_method("nuwa").sites(cfg, 32)
    assert isinstance(s1, EncoderSite) and s1.context and s1.keep.budget == 112
    assert isinstance(s2, LayerSite) and s2.layer == 16 and s2.keep.budget == 64
    assert cfg.params == {"layer": None, "anchors": None, "region": 2, "distance": 0.265,
                          "pillars": 0.45}
    assert get_method("nuwa").sites(PruneConfig.from_options({"method": "nuwa", "ratio": 0.6}),
                                    4)[0].keep.ratio == 1          # 1.75 x ratio, capped


@pytest.mark.parametrize("bad, match", [
    ({"region": 0}, "'region' must be an int >= 1"),
    ({"distance": 0}, "'distance' must be a number in"),
    ({"pillars": 1.5}, "'pillars' must be a number in"),
    ({"anchors": 0}, "'anchors' must be an int >= 1"),
    ({"grid": 3}, "valid options"),
])
def test_bad_options_are_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig.from_options({"method": "nuwa", "budget": 16, **bad})


@st.composite
def cases(draw):
    kv = draw(st.sampled_from([1, 2]))
    spec = TinySpec(hidden=kv * 32, heads=kv * 2, kv_heads=kv, layers=draw(st.integers(2, 4)),
                    image_size=draw(st.sampled_from([32, 48])), seed=draw(st.integers(0, 50)))
    batch = draw(st.integers(1, 3))
    pad = tuple(draw(st.lists(st.integers(0, 3), min_size=batch, max_size=batch)))
    inputs = dict(batch=batch, pad=pad, prefix=draw(st.integers(0, 4)), suffix=draw(st.integers(1, 4)),
                  seed=draw(st.integers(0, 99)))
    V = spec.visual_tokens
    budget = draw(st.sampled_from([1, 3, V // 4, V // 2, V]))
    layer = draw(st.sampled_from([None, 1, spec.layers - 1]))
    extra = draw(st.sampled_from([{}, {"region": 3}, {"pillars": 0.0}, {"distance": 1.0}]))
    return spec, inputs, budget, layer, extra


def _attached(spec, inp_kw):
    torch._dynamo.reset()
    model = vtp_compile.attach(tiny_llava(spec))
    inputs = make_inputs(spec, **inp_kw)
    return model, inputs, (inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"])


@settings(**SETTINGS)
@given(cases())
def test_forward_equals_oracle(case):
    """Direct forward: the vision tower is in the graph and so are its internals."""
    spec, inp_kw, budget, layer, extra = case
    model, inputs, args = _attached(spec, inp_kw)
    got = compiled_logits(model, inputs, options("nuwa", budget=budget, layer=layer, **extra))
    want, _ = oracle_nuwa.nuwa_forward(model, *args, budget, layer=layer, **extra)
    torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=3e-5, rtol=1e-4)
    rep = REPORTS[-1]
    assert [s.name for s in rep.sites] == ["nuwa-anchors", "nuwa"]


def _generate_equals_oracle(spec, inp_kw, budget, layer, extra, n):
    """Greedy ``generate`` through vtp (attached model) equals oracle_nuwa's; returns the
    output and the inputs."""
    model, inputs, args = _attached(spec, inp_kw)
    want, margins = oracle_nuwa.nuwa_generate(model, *args, budget, n, layer=layer, **extra)
    with torch.no_grad():
        model(**inputs)
        model.compile(backend="vtp", options=options("nuwa", budget=budget, layer=layer, **extra))
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, return_dict_in_generate=True)
    assert_tokens_match(out.sequences[:, inputs["input_ids"].shape[1]:], want, margins)
    return out, inputs


@settings(**SETTINGS)
@given(cases())
def test_generate_equals_oracle(case):
    """generate: transformers encodes the images eagerly; the recorded internals are used."""
    spec, inp_kw, budget, layer, extra = case
    out, inputs = _generate_equals_oracle(spec, inp_kw, budget, layer, extra, 4)
    # every layer caches the text and the finally kept tokens: one length for all layers
    V = spec.visual_tokens
    assert_cache_holds(out.past_key_values, inputs, V - min(budget, V), 3)


def test_keep_all_is_identity():
    spec = TinySpec(image_size=48)
    model = vtp_compile.attach(tiny_llava(spec))
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    assert_keep_all_is_identity(model, inputs, "nuwa", spec.visual_tokens)


def test_text_only_is_identity():
    spec = TinySpec()
    model = vtp_compile.attach(tiny_llava(spec))
    inputs = make_inputs(spec, batch=2, pad=(1, 0), text_only=True)
    with torch.no_grad():
        ref = model(**inputs).logits
    got = compiled_logits(model, inputs, options("nuwa", budget=2))
    torch.testing.assert_close(got[valid(inputs)], ref[valid(inputs)], atol=1e-5, rtol=1e-5)


def test_without_attach_is_a_clear_error(monkeypatch):
    from vtp_compile import vision_context
    monkeypatch.setattr(vision_context._vision, "_RECORD", None)
    spec = TinySpec()
    model = tiny_llava(spec)
    inputs = make_inputs(spec)
    with pytest.raises(Exception, match="vtp_compile.attach"):
        compiled_logits(model, inputs, options("nuwa", budget=2))


def test_explain_reports_both_stages_and_attaches_only_for_the_capture():
    spec = TinySpec(image_size=48, layers=4)
    model = tiny_llava(spec)
    inputs = make_inputs(spec)
    ex = vtp_compile.explain(model, inputs, {"method": "nuwa", "budget": 6})
    text = str(ex)
    assert "nuwa-anchors at encoder" in text and "36 -> 11" in text
    assert "nuwa at layer 2" in text and "11 -> 6" in text
    assert not model._forward_pre_hooks                      # explain detached again
    want = oracle_nuwa.nuwa_forward(model, inputs["input_ids"], inputs["attention_mask"],
                                    inputs["pixel_values"], 6)[1]
    assert ex.sites[0].kept_visual_index[0].tolist() == want[0][0]


# vision_feature_select_strategy="full": each image's CLS token is its first visual token, always
# an anchor, never aggregated (docs/methods.md, Nüwa)
FULL = [
    (TinySpec(image_size=48, layers=3, strategy="full", seed=3), dict(batch=2, pad=(0, 2), seed=1), 5, None, {}),
    (TinySpec(image_size=32, layers=4, strategy="full", seed=7), dict(batch=1, seed=2), 1, 1, {"region": 3}),
    (TinySpec(image_size=32, layers=3, strategy="full", seed=5), dict(batch=2, images=2, seed=4), 3, None,
     {"pillars": 0.0}),
    (TinySpec(image_size=32, layers=3, strategy="full", seed=5), dict(batch=1, images=2, seed=4), 4, None,
     {"anchors": 1}),
]


@pytest.mark.parametrize("spec, inp_kw, budget, layer, extra", FULL)
def test_full_strategy_forward_equals_oracle(spec, inp_kw, budget, layer, extra):
    model, inputs, args = _attached(spec, inp_kw)
    got = compiled_logits(model, inputs, options("nuwa", budget=budget, layer=layer, **extra))
    okw = {("n_anchors" if k == "anchors" else k): v for k, v in extra.items()}
    want, (sel1, _) = oracle_nuwa.nuwa_forward(model, *args, budget, layer=layer, **okw)
    torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=3e-5, rtol=1e-4)
    per = spec.visual_tokens
    n_img = inp_kw.get("images", 1)
    assert all({i * per for i in range(min(n_img, len(s)))} <= set(s) for s in sel1)   # CLS anchors


@pytest.mark.parametrize("spec, inp_kw, budget, layer, extra", FULL[:2])
def test_full_strategy_generate_equals_oracle(spec, inp_kw, budget, layer, extra):
    _generate_equals_oracle(spec, inp_kw, budget, layer, extra, 2)


def test_full_strategy_keep_all_is_identity():
    spec = TinySpec(image_size=32, strategy="full")
    model = vtp_compile.attach(tiny_llava(spec))
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    assert_keep_all_is_identity(model, inputs, "nuwa", spec.visual_tokens)


@pytest.mark.parametrize("rows", [[(0, 7, 2), (0, 10, 1), (3, 3, 2)],     # 5 images in 3 rows
                                  [(2, 3, 1), (2, 3, 3)]],                 # 4 in 2, not by row
                         ids=["uneven-total", "even-total"])
def test_rows_with_different_image_counts_are_a_clear_error(rows):
    """One patch grid per row: a batch whose rows hold different numbers of images is refused
    with an error that says so (while tracing, or by the run-time check), never a wrong answer."""
    spec = TinySpec(image_size=16, layers=3, vision_layers=2)
    model = vtp_compile.attach(tiny_llava(spec))
    inputs = make_inputs(spec, rows=rows, side="left")
    with pytest.raises(Exception, match="every row must hold"):
        compiled_logits(model, inputs, options("nuwa", budget=2, layer=1))
