"""generate() after a pruned prefill: compacted cache, oracle-equal tokens, no recompiles."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from vtp_compile.passes.manager import REPORTS
from vtp_compile.testing.oracle import OracleSpec, oracle_generate
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import assert_tokens_match, options


def _generate(model, inputs, opts, **kw):
    with torch.no_grad():
        model(**inputs)
        model.compile(backend="vtp", options=opts)
        return model.generate(**inputs, return_dict_in_generate=True, **kw)


def _cache_lengths(cache):
    return [layer.keys.shape[-2] for layer in cache.layers]


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(["fastv", "random", "divprune", "acgr"]), batch=st.integers(1, 3),
       budget=st.integers(1, 17), seed=st.integers(0, 30), data=st.data())
def test_greedy_generate_equals_oracle(method, batch, budget, seed, data):
    torch._dynamo.reset()
    spec = TinySpec(seed=seed, layers=3)
    pad = tuple(data.draw(st.lists(st.integers(0, 3), min_size=batch, max_size=batch)))
    inputs = make_inputs(spec, batch=batch, pad=pad, seed=seed, tiles=data.draw(st.sampled_from([None, 2])))
    model = tiny_llava(spec)
    want, margins = oracle_generate(model, inputs["input_ids"], inputs["attention_mask"],
                                    inputs["pixel_values"], OracleSpec(method, budget=budget, layer=1), 5)
    layer = 1 if method in ("fastv", "acgr") else None
    out = _generate(model, inputs, options(method, budget=budget, layer=layer),
                    max_new_tokens=5, do_sample=False)
    got = out.sequences[:, inputs["input_ids"].shape[1]:]
    assert_tokens_match(got, want, margins)
    L = inputs["input_ids"].shape[1]
    kept = min(budget, spec.visual_tokens)
    # every layer holds only kept prompt tokens plus the generated ones (last one not cached)
    assert set(_cache_lengths(out.past_key_values)) == {L - spec.visual_tokens + kept + 4}


def test_sampling_runs_and_keeps_shapes():
    spec = TinySpec()
    inputs = make_inputs(spec, batch=2, pad=(2, 0))
    model = tiny_llava(spec)
    torch.manual_seed(0)
    out = _generate(model, inputs, options("fastv", budget=4, layer=1), max_new_tokens=6,
                    do_sample=True, top_k=5)
    assert out.sequences.shape == (2, inputs["input_ids"].shape[1] + 6)


def test_kv_bytes_saved_in_generate():
    spec = TinySpec(layers=4)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    base = tiny_llava(spec)
    with torch.no_grad():
        full = base.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    pruned = _generate(tiny_llava(spec), inputs, options("fastv", budget=4, layer=2), max_new_tokens=3,
                       do_sample=False)
    nbytes = lambda c: sum(l.keys.numel() * l.keys.element_size() * 2 for l in c.layers)  # noqa: E731
    saved = nbytes(full.past_key_values) - nbytes(pruned.past_key_values)
    per_token = 2 * spec.kv_heads * (spec.hidden // spec.heads) * 4 * spec.layers * 2  # batch 2
    assert saved == (spec.visual_tokens - 4) * per_token


def test_right_padding_is_an_error_not_a_wrong_answer():
    spec = TinySpec()
    inputs = make_inputs(spec, batch=2)
    inputs["attention_mask"][0, -1] = 0   # right padding in row 0
    model = tiny_llava(spec)
    with pytest.raises(Exception, match="left padding"):
        _generate(model, inputs, options("fastv", budget=4, layer=1), max_new_tokens=3, do_sample=False)


@pytest.mark.parametrize("capture_scalars", [True, False])
@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("method", ["fastv", "random"])
def test_no_recompile_per_prompt_length_or_step(method, grad_mode, capture_scalars, monkeypatch):
    """Dynamic-shape recompiles are pruned too and stay oracle-exact. inference_mode without
    capture_scalar_outputs (what ``vtp eval`` runs) once failed re-propagating fake shapes."""
    monkeypatch.setattr(torch._dynamo.config, "capture_scalar_outputs", capture_scalars)
    spec = TinySpec()
    model = tiny_llava(spec)
    start = len(REPORTS)
    layer = 1 if method == "fastv" else None
    with grad_mode():
        model(**make_inputs(spec))
        model.compile(backend="vtp", options=options(method, budget=4, layer=layer))
        for suffix in (2, 3, 5, 7):
            inputs = make_inputs(spec, batch=2, pad=(0, 1 + suffix % 2), suffix=suffix, seed=suffix)
            got = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            want, margins = oracle_generate(model, inputs["input_ids"], inputs["attention_mask"],
                                            inputs["pixel_values"],
                                            OracleSpec(method, budget=4, layer=layer or 2), 4)
            assert_tokens_match(got[:, inputs["input_ids"].shape[1]:], want, margins)
    phases = [r.phase for r in REPORTS[start:]]
    assert all(r.sites for r in REPORTS[start:] if r.phase == "prefill"), "a prefill went unpruned"
    # first prefill static, one dynamic recompile; decode: one static, one dynamic recompile
    assert phases.count("prefill") <= 2 and phases.count("decode") <= 2, phases
