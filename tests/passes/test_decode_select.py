"""DyCoke's stage 2 (a DecodeSite): the prefill records the cache's visual columns, each decode
step re-picks which of them the later layers read; against the mask oracle."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import vtp_compile
from vtp_compile.errors import OptionError
from vtp_compile.testing.oracle_decode_select import decode_select_generate
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import assert_cache_holds, assert_tokens_match, compiled_generate, options


def _stage1_kept(model, inputs, opts):
    """The visual indices stage 1 keeps per row (its selection is checked elsewhere)."""
    model._compiled_call_impl = None       # an earlier model.compile(): explain captures eagerly
    torch._dynamo.reset()
    ex = vtp_compile.explain(model, inputs, {k: v for k, v in opts.items() if not k.startswith("kv_")})
    assert ex.sites, ex.reason
    idx = ex.sites[0].kept_visual_index
    return [[int(i) for i in row if i >= 0] for row in idx]


def _check(spec, model, inputs, opts, new=5):
    kept = _stage1_kept(model, inputs, opts)
    want, margins, picks = decode_select_generate(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], kept,
        opts["kv_keep"], opts.get("kv_layer", 3), opts.get("kv_similarity", 0.9), new)
    out = compiled_generate(model, inputs, opts, new)
    assert_tokens_match(out.sequences[:, inputs["input_ids"].shape[1]:], want, margins)
    V = int((inputs["input_ids"][0] == model.config.image_token_id).sum())
    assert_cache_holds(out.past_key_values, inputs, [V - len(k) for k in kept], new - 1)
    return picks


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 30), batch=st.integers(1, 3), data=st.data())
def test_generate_equals_oracle(seed, batch, data):
    spec = TinySpec(seed=seed, layers=data.draw(st.integers(2, 4)))
    opts = options("dycoke", ratio=data.draw(st.sampled_from([1.0, 0.5])),
                   kv_keep=data.draw(st.sampled_from([0.01, 0.2, 0.5, 1.0])),
                   kv_layer=data.draw(st.integers(1, spec.layers - 1)),
                   kv_similarity=data.draw(st.sampled_from([0.0, 0.9, 1.0])))
    pad = tuple(data.draw(st.lists(st.integers(0, 3), min_size=batch, max_size=batch)))
    inputs = make_inputs(spec, batch=batch, pad=pad, seed=seed,
                         tiles=data.draw(st.sampled_from([None, 2])))
    _check(spec, tiny_llava(spec), inputs, opts)


def test_picks_change_and_stay():
    """Similarity 0 keeps the first step's pick; 1 re-picks every step (picks then differ)."""
    spec = TinySpec(layers=3, seed=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(2, 0))
    never = _check(spec, model, inputs, options("dycoke", ratio=1.0, kv_keep=0.2, kv_layer=2,
                                                kv_similarity=0.0), new=6)
    assert all(p == never[0] for p in never)
    always = _check(spec, model, inputs, options("dycoke", ratio=1.0, kv_keep=0.2, kv_layer=2,
                                                 kv_similarity=1.0), new=6)
    assert any(p != always[0] for p in always)


@pytest.mark.inductor
def test_inductor_equals_oracle():
    """The default path: Inductor lowers the decode-time pick."""
    spec = TinySpec(layers=4, seed=5)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 3), tiles=2)
    _check(spec, model, inputs, options("dycoke", ratio=0.5, kv_keep=0.2, kv_layer=2, inner="inductor"))


def test_text_only_decode_reads_the_whole_cache():
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    img = make_inputs(spec, batch=2, pad=(0, 1))
    txt = make_inputs(spec, batch=2, pad=(0, 1), text_only=True, suffix=16)
    with torch.no_grad():
        ref = model.generate(**txt, max_new_tokens=4, do_sample=False)
    compiled_generate(model, img, options("dycoke", ratio=1.0, kv_keep=0.2, kv_layer=1), 3)
    with torch.no_grad():
        got = model.generate(**txt, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, ref)


def test_bad_options_are_refused():
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=1)
    with pytest.raises(OptionError, match="kv_keep"):
        vtp_compile.explain(model, inputs, {"method": "dycoke", "kv_keep": 0})
    with pytest.raises(OptionError, match="decode layer 3 is out of range"):
        vtp_compile.explain(model, inputs, {"method": "dycoke", "kv_keep": 0.2, "kv_layer": 3})
    with pytest.raises(OptionError, match="CUDA graphs"):
        vtp_compile.config.PruneConfig.from_options({"method": "dycoke", "kv_keep": 0.2,
                                                     "mode": "reduce-overhead"})


def test_a_static_cache_skips_stage_2_with_one_line(caplog):
    """A static buffer is not in the compacted layout the pick addresses: stage 2 is skipped
    (logged), stage 1 still runs, tokens equal stage 1 alone."""
    import logging
    spec = TinySpec(layers=3, seed=2)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(1, 0))
    static = {"max_new_tokens": 4, "do_sample": False, "cache_implementation": "static"}

    def run(opts):
        torch._dynamo.reset()
        model._compiled_call_impl = None
        model(**inputs)
        model.compile(backend="vtp", options=opts)
        return model.generate(**inputs, **static)
    want = run(options("dycoke", ratio=0.5))
    with caplog.at_level(logging.WARNING, logger="vtp_compile"):
        got = run(options("dycoke", ratio=0.5, kv_keep=0.2, kv_layer=1))
    assert torch.equal(got, want)
    assert any("decode-time selection is skipped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_clips_keep_all_equals_stage_1(family, dynamo_for):
    """On clips of a video family (M-RoPE Qwen2.5-VL; LLaVA-OneVision with ``frame_tokens``),
    stage 2 picking every visual column decodes exactly as stage 1 alone, through the decode
    pass; a smaller pick runs (its rule is checked against the oracle above)."""
    from vtp_compile.testing import families as F
    from vtp_compile.video import frame_tokens

    from ..families.test_video import _inputs
    dynamo_for(family)
    model = F.build_model(family)
    x, _ = _inputs(family, model, "video")
    base = {"method": "dycoke", "ratio": 0.5, "inner_backend": "eager"}
    if frame_tokens(model):
        base["frame_tokens"] = frame_tokens(model)
    with torch.no_grad():
        want = compiled_generate(model, x, base, 4).sequences
        got = compiled_generate(model, x, {**base, "kv_keep": 1.0, "kv_layer": 1}, 4).sequences
        assert torch.equal(got, want)
        decode = [r for r in vtp_compile.reports(model) if r.phase == "decode"]
        assert decode and any(p.name == "decode_select" for r in decode for p in r.passes)
        small = compiled_generate(model, x, {**base, "kv_keep": 0.2, "kv_layer": 1}, 4)
    assert small.sequences.shape == want.shape
    model._compiled_call_impl = None
