"""Property tests: compiled pruning == the independent eager oracle, over generated configs."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import (assert_keep_all_is_identity, compiled_logits, last_report,
                       options, oracle_logits, oracle_spec, valid)

SETTINGS = dict(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def method_params(draw, method, spec):
    """The method's own options (layer for layer-site methods, DCP's knobs)."""
    if method == "fastv":
        return {"layer": draw(st.integers(1, spec.layers - 1))}
    if method == "acgr":
        site = draw(st.sampled_from(["layer", "encoder"]))
        p = {"site": site, "tau": draw(st.sampled_from([0.0, 0.3, 100.0])),
             "m": draw(st.integers(1, 4)), "iters": draw(st.integers(0, 3)),
             "merge": draw(st.booleans())}
        if site == "layer":
            p["layer"] = draw(st.integers(1, spec.layers - 1))
        return p
    return {}


@st.composite
def cases(draw, methods=("fastv", "random", "divprune", "acgr")):
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.sampled_from([1, 2]))
    head_dim = draw(st.sampled_from([8, 16]))
    spec = TinySpec(hidden=heads * head_dim, heads=heads, kv_heads=kv,
                    layers=draw(st.integers(2, 4)), image_size=draw(st.sampled_from([16, 24, 32])),
                    seed=draw(st.integers(0, 50)))
    batch = draw(st.integers(1, 3))
    images = draw(st.sampled_from([1, 1, 2]))
    pad = tuple(draw(st.lists(st.integers(0, 3), min_size=batch, max_size=batch)))
    inputs = dict(batch=batch, prefix=draw(st.integers(0, 5)), suffix=draw(st.integers(1, 5)),
                  images=images, pad=pad, seed=draw(st.integers(0, 99)),
                  tiles=draw(st.sampled_from([None, 2, 3])))
    method = draw(st.sampled_from(methods))
    V = spec.visual_tokens * images
    if draw(st.booleans()):
        keep = {"budget": draw(st.sampled_from([1, 2, V // 3 + 1, V - 1, V, V + 5]))}
    else:
        keep = {"ratio": draw(st.sampled_from([0.05, 0.11, 0.25, 0.5, 1.0]))}
    return spec, inputs, method, keep, draw(method_params(method, spec))


@settings(**SETTINGS)
@given(cases())
def test_compiled_equals_oracle(case):
    spec, inp_kw, method, keep, params = case
    torch._dynamo.reset()
    model = tiny_llava(spec)
    inputs = make_inputs(spec, **inp_kw)
    got = compiled_logits(model, inputs, options(method, **keep, **params))
    want = oracle_logits(model, inputs, oracle_spec(method, **keep, **params))
    assert got.shape == want.shape == (*inputs["input_ids"].shape, spec.vocab)
    torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=2e-5, rtol=1e-4)
    rep = last_report()
    assert rep.phase == "prefill" and len(rep.sites) == 1


@settings(**SETTINGS)
@given(cases())
def test_keep_all_is_identity(case):
    spec, inp_kw, method, _, params = case
    torch._dynamo.reset()
    model = tiny_llava(spec)
    inputs = make_inputs(spec, **inp_kw)
    assert_keep_all_is_identity(model, inputs, method, spec.visual_tokens * inp_kw["images"], **params)


@pytest.mark.parametrize("method", ["fastv", "random", "divprune", "acgr", "dstp", "alvts"])
def test_text_only_is_untouched(method):
    spec = TinySpec()
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2), text_only=True)
    with torch.no_grad():
        model(**inputs)
        ref = model(**inputs).logits
    got = compiled_logits(model, inputs, options(method, budget=2))
    torch.testing.assert_close(got[valid(inputs)], ref[valid(inputs)])
    assert last_report().sites == [] and last_report().phase != "prefill"


def test_sequence_length_equal_to_hidden_size():
    """A literal that merely equals the sequence length (hidden == L) must stay untouched."""
    spec = TinySpec(hidden=32, heads=4, kv_heads=2, image_size=32, patch=8)  # 16 visual tokens
    inputs = make_inputs(spec, batch=2, prefix=8, suffix=8)                 # L = 32 = hidden
    assert inputs["input_ids"].shape[1] == spec.hidden
    model = tiny_llava(spec)
    for method in ("fastv", "random"):
        torch._dynamo.reset()
        got = compiled_logits(model, inputs, options(method, budget=3, layer=1 if method == "fastv" else None))
        want = oracle_logits(model, inputs, oracle_spec(method, budget=3, layer=1))
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_report_counts_and_flops():
    spec = TinySpec(layers=4)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2)
    compiled_logits(model, inputs, options("fastv", budget=4, layer=2))
    (site,) = last_report().sites
    assert (site.layer, site.visual_count, site.kept) == (2, 16, 4)
    assert 0 < site.flops_saved < site.flops_total
    # every layer's cache drops 12 tokens: 2 (k, v) * kv_heads * head_dim * 4 bytes per token per layer
    assert site.kv_bytes_saved == 4 * 12 * 2 * spec.kv_heads * (spec.hidden // spec.heads) * 4 * 2


def test_without_capture_scalar_outputs_the_decoder_graph_is_still_pruned():
    """The placeholder check splits the prefill; the piece with the splice and layers is pruned."""
    torch._dynamo.config.capture_scalar_outputs = False
    spec = TinySpec()
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    from vtp_compile.passes.manager import REPORTS
    start = len(REPORTS)
    got = compiled_logits(model, inputs, options("fastv", budget=4, layer=1))
    want = oracle_logits(model, inputs, oracle_spec("fastv", budget=4, layer=1))
    torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=2e-5, rtol=1e-4)
    assert sum(len(r.sites) for r in REPORTS[start:]) == 1
