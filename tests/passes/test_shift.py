"""DSTP mechanism: reserve in prefill, shift-aware decode masks, runtime state checks."""
import logging

import torch
from hypothesis import given, settings, strategies as st

from tests.helpers import REPORTS
from vtp_compile.testing.oracle import OracleSpec, oracle_generate
from vtp_compile.testing.oracle_dstp import dstp_generate
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import (assert_cache_holds, assert_keep_all_is_identity, assert_tokens_match, compiled_logits,
                       oracle_logits, options, valid)


def _generate(model, inputs, opts, n):
    torch._dynamo.reset()
    model._compiled_call_impl = None
    with torch.no_grad():
        model(**inputs)
        model.compile(backend="vtp", options=opts)
        return model.generate(**inputs, max_new_tokens=n, do_sample=False,
                              return_dict_in_generate=True)


@settings(max_examples=5)
@given(seed=st.integers(0, 30), batch=st.integers(1, 3), data=st.data())
def test_generate_equals_oracle(seed, batch, data):
    spec = TinySpec(seed=seed, layers=data.draw(st.integers(2, 4)))
    V = spec.visual_tokens
    budget = data.draw(st.sampled_from([1, 2, 4, V - 1, V]))
    reserve = data.draw(st.sampled_from([None, 0, 2, V]))
    tau = data.draw(st.sampled_from([0.0, 0.2, 1.0]))
    layer = data.draw(st.integers(1, spec.layers - 1))
    pad = tuple(data.draw(st.lists(st.integers(0, 3), min_size=batch, max_size=batch)))
    inputs = make_inputs(spec, batch=batch, pad=pad, seed=seed,
                         tiles=data.draw(st.sampled_from([None, 2])))
    model = tiny_llava(spec)
    want, margins, _ = dstp_generate(model, inputs["input_ids"], inputs["attention_mask"],
                                     inputs["pixel_values"], budget, reserve, layer, tau, 5)
    opts = options("dstp", budget=budget, layer=layer, tau=tau, reserve_by="score")
    if reserve is not None:
        opts["reserve"] = reserve
    out = _generate(model, inputs, opts, 5)
    assert_tokens_match(out.sequences[:, inputs["input_ids"].shape[1]:], want, margins)
    k = min(budget, V)
    r = min(k if reserve is None else reserve, V - k)
    L = inputs["input_ids"].shape[1]
    assert_cache_holds(out.past_key_values, inputs, V - k - r, 4)


def test_prefill_logits_equal_the_base_method():
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2), tiles=2)
    want = oracle_logits(model, inputs, OracleSpec("fastv", budget=3, layer=1))
    for reserve in (None, 5, 13):
        torch._dynamo.reset()
        got = compiled_logits(model, inputs, options("dstp", budget=3, layer=1, reserve=reserve))
        torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=2e-5, rtol=1e-4)
        (site,) = REPORTS[-1].sites
        assert (site.kept, site.reserve) == (3, min(3 if reserve is None else reserve, 13))


def test_without_swaps_decoding_equals_the_base_method():
    """tau = 1 never swaps: the reserve is carried but never attended, so tokens are FastV's."""
    spec = TinySpec(layers=3, seed=4)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(1, 0))
    want, margins = oracle_generate(model, inputs["input_ids"], inputs["attention_mask"],
                                    inputs["pixel_values"], OracleSpec("fastv", budget=3, layer=1), 5)
    out = _generate(model, inputs, options("dstp", budget=3, layer=1, tau=1.0), 5)
    assert_tokens_match(out.sequences[:, inputs["input_ids"].shape[1]:], want, margins)


def test_text_only_decode_attends_to_the_whole_cache(caplog):
    """A text-only prompt has no DSTP prefill; its decode steps must not use a stale state."""
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    img = make_inputs(spec, batch=2, pad=(0, 1))
    txt = make_inputs(spec, batch=2, pad=(0, 1), text_only=True, suffix=16)  # same length
    with torch.no_grad():
        ref = model.generate(**txt, max_new_tokens=4, do_sample=False)
    _generate(model, img, options("dstp", budget=3, layer=1, tau=0.0), 3)
    with caplog.at_level(logging.INFO, logger="vtp_compile"), torch.no_grad():
        got = model.generate(**txt, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, ref)
    assert any("does not come from the last prefill of this configuration" in r.getMessage() for r in caplog.records)


def test_keep_all_is_identity():
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    assert_keep_all_is_identity(model, inputs, "dstp", spec.visual_tokens, layer=1)
