"""ALVTS routing: per-layer skip + reintegration against the plain-loop oracle."""
import torch
from hypothesis import given, settings, strategies as st

import vtp_compile
from vtp_compile.methods import alvts
from tests.helpers import REPORTS
from vtp_compile.testing import oracle_alvts
from vtp_compile.testing.oracle import OracleSpec
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import (assert_cache_holds, assert_keep_all_is_identity, assert_tokens_match, compiled_logits,
                       options, valid)

SETTINGS = dict(max_examples=5)


@st.composite
def cases(draw):
    kv = draw(st.sampled_from([1, 2]))
    heads = kv * draw(st.sampled_from([1, 2]))
    spec = TinySpec(hidden=heads * 16, heads=heads, kv_heads=kv, layers=draw(st.integers(2, 4)),
                    image_size=draw(st.sampled_from([16, 32])), seed=draw(st.integers(0, 50)))
    batch = draw(st.integers(1, 3))
    pad = tuple(draw(st.lists(st.integers(0, 3), min_size=batch, max_size=batch)))
    inputs = dict(batch=batch, pad=pad, prefix=draw(st.integers(0, 4)), suffix=draw(st.integers(1, 4)),
                  seed=draw(st.integers(0, 99)), tiles=draw(st.sampled_from([None, 2])))
    V = spec.visual_tokens
    keep = draw(st.sampled_from([{"budget": 1}, {"budget": V // 2}, {"budget": V}, {"ratio": 0.25}]))
    return spec, inputs, keep, draw(st.integers(0, spec.layers - 1)), draw(st.integers(1, 16))


@settings(**SETTINGS)
@given(cases())
def test_forward_equals_oracle(case):
    spec, inp_kw, keep, layer, rank = case
    torch._dynamo.reset()
    model = tiny_llava(spec)
    inputs = make_inputs(spec, **inp_kw)
    got = compiled_logits(model, inputs, options("alvts", layer=layer, rank=rank, **keep))
    want, _ = oracle_alvts.alvts_forward(model, inputs["input_ids"], inputs["attention_mask"],
                                         inputs["pixel_values"], OracleSpec("alvts", layer=layer, **keep), rank)
    torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=2e-5, rtol=1e-4)
    rep = REPORTS[-1] if REPORTS[-1].phase == "prefill" else REPORTS[-2]
    assert [s.layer for s in rep.sites] == list(range(layer, spec.layers))   # one site per layer


@settings(**SETTINGS)
@given(cases())
def test_generate_equals_oracle(case):
    spec, inp_kw, keep, layer, rank = case
    torch._dynamo.reset()
    model = tiny_llava(spec)
    inputs = make_inputs(spec, **inp_kw)
    want, margins, _ = oracle_alvts.alvts_generate(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
        OracleSpec("alvts", layer=layer, **keep), rank, 4)
    with torch.no_grad():
        model(**inputs)
        model.compile(backend="vtp", options=options("alvts", layer=layer, rank=rank, **keep))
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert_tokens_match(out.sequences[:, inputs["input_ids"].shape[1]:], want, margins)
    # every layer caches text + its k routed visual tokens: one length for all layers
    V = spec.visual_tokens
    k = OracleSpec("alvts", layer=layer, **keep).n_keep(V)
    L = inputs["input_ids"].shape[1]
    assert_cache_holds(out.past_key_values, inputs, V - k, 3)


def test_auto_rank_is_the_smallest_consistent_one():
    """``rank="auto"``: the smallest rank whose top-k agrees with full rank on >= 90%."""
    spec = TinySpec(hidden=64, heads=2, kv_heads=1, layers=2, seed=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    layer = model.model.language_model.layers[1]
    with torch.no_grad():
        model(**inputs)
        hs = model(**inputs, output_hidden_states=True).hidden_states[1]   # entering layer 1
    vis = inputs["input_ids"] == spec.image_token_id
    k = 4
    A, B, S = alvts.bilinear_factors(layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight,
                                     layer.input_layernorm.weight, 2, 1)
    qpos = torch.full((hs.shape[0],), hs.shape[1] - 1)
    r = alvts.choose_rank(A, B, S, 32 ** -0.5, [(hs, vis, qpos, k)], cap=16, consistency=0.9)

    def overlap(rank):   # with the oracle's own factors and selector
        fr, scale = oracle_alvts.lowrank(layer, 2, 1, rank)
        ff, _ = oracle_alvts.lowrank(layer, 2, 1, 32)
        n = 0
        for b in range(2):
            pos = torch.nonzero(vis[b]).flatten().tolist()
            a = oracle_alvts._top(oracle_alvts.selector(hs[b], pos, fr, scale), k)
            f = oracle_alvts._top(oracle_alvts.selector(hs[b], pos, ff, scale), k)
            n += len(set(a) & set(f))
        return n / (2 * k)

    assert overlap(r) >= 0.9 or r == 16
    assert r == 1 or overlap(r - 1) < 0.9


def test_explain_reports_every_routed_layer():
    spec = TinySpec(layers=4)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    with torch.no_grad():
        model(**inputs)
    ex = vtp_compile.explain(model, inputs, {"method": "alvts", "budget": 4, "layer": 1, "rank": 3})
    assert [s.layer for s in ex.sites] == [1, 2, 3]
    assert all(s.kept == 4 and s.kv_bytes_saved > 0 and 0 < s.flops_saved for s in ex.sites)
    _, routes = oracle_alvts.alvts_forward(model, inputs["input_ids"], inputs["attention_mask"],
                                           inputs["pixel_values"], OracleSpec("alvts", budget=4, layer=1), 3)
    assert [s.kept_visual_index.tolist() for s in ex.sites] == [routes[i] for i in (1, 2, 3)]


def test_keep_all_is_identity():
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    assert_keep_all_is_identity(model, inputs, "alvts", spec.visual_tokens, layer=0)


def test_a_second_prompt_length_routes_in_the_dynamic_graph():
    """A new prompt length after the first compiles a dynamic-shape prefill graph, whose example
    inputs hold SymInts: the selector's calibration runs it with their values (it raised a
    PassError in 'route' before), and the tokens equal the mask oracle's for both lengths."""
    from vtp_compile.testing import families as F
    from vtp_compile.testing.oracle_mask import Pruning, masked_generate
    model = F.build_model("llava")
    batches = [F.make_inputs("llava", model, rows, seed=s) for s, rows in enumerate((
        [F.RowSpec(3, 4), F.RowSpec(4, 3, ())],
        [F.RowSpec(5, 6, (F.ImageSpec(), F.ImageSpec())), F.RowSpec(2, 3)]))]
    pruning = Pruning("alvts", budget=3, layer=1, rank=3)
    with torch.no_grad():
        want = [masked_generate(model, x, F.visual_positions("llava", model, x), pruning, 2) for x in batches]
        model(**batches[0])
        model.compile(backend="vtp", options=options("alvts", budget=3, layer=1, rank=3))
        for x, (tokens, margins, _) in zip(batches, want):
            out = model.generate(**x, max_new_tokens=2, do_sample=False)
            assert_tokens_match(out[:, x["input_ids"].shape[1]:], tokens, margins)
    assert sum(1 for r in REPORTS if r.phase == "prefill" and r.sites) == 2
