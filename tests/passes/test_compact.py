"""Property tests: compiled pruning == the independent eager oracle, over generated configs and
prompt batches (lengths, padding side and amount, images per row including text-only rows)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import (assert_keep_all_is_identity, compiled_logits, last_report, options,
                       oracle_logits, oracle_spec, record_case, valid)
from ..strategies import NO_SHRINK, keeps, prompt_batches, tiny_specs

SETTINGS = dict(max_examples=8)


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
    if method == "random":
        return {"seed": draw(st.sampled_from([0, 7]))}
    return {}


@st.composite
def cases(draw, methods=("fastv", "random", "divprune", "acgr")):
    spec = draw(tiny_specs())
    batch = draw(prompt_batches())
    method = draw(st.sampled_from(methods))
    return spec, batch, method, draw(keeps(spec.visual_tokens)), draw(method_params(method, spec))


@settings(**SETTINGS)
@given(cases())
def test_compiled_equals_oracle(case):
    spec, batch, method, keep, params = case
    torch._dynamo.reset()
    model = tiny_llava(spec)
    inputs = make_inputs(spec, **batch)
    got = compiled_logits(model, inputs, options(method, **keep, **params))
    want = oracle_logits(model, inputs, oracle_spec(method, **keep, **params))
    assert got.shape == want.shape == (*inputs["input_ids"].shape, spec.vocab)
    torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=2e-5, rtol=1e-4)
    record_case("forward/eager")
    rep = last_report()
    assert rep.phase == "prefill" and len(rep.sites) == 1


@settings(**dict(SETTINGS, max_examples=4), phases=NO_SHRINK)
@given(cases())
def test_keep_all_is_identity(case):
    spec, batch, method, _, params = case
    torch._dynamo.reset()
    model = tiny_llava(spec)
    inputs = make_inputs(spec, **batch)
    most = max(r[2] for r in batch["rows"]) * spec.visual_tokens
    assert_keep_all_is_identity(model, inputs, method, most, **params)


@pytest.mark.parametrize("method", ["fastv", "random", "divprune", "acgr", "dstp", "alvts", "pdrop", "dart"])
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
    record_case("text-only")


def test_right_padded_row_is_pruned_as_if_alone():
    """Regression: scoring read the pad position's query in right-padded rows."""
    spec = TinySpec()
    model = tiny_llava(spec)
    batch = make_inputs(spec, rows=[(3, 6, 1), (3, 3, 1)], side="right", seed=4)
    alone = make_inputs(spec, rows=[(3, 3, 1)], seed=4)
    alone["input_ids"] = batch["input_ids"][1:, :alone["input_ids"].shape[1]]
    alone["pixel_values"] = batch["pixel_values"][1:]
    assert int((batch["attention_mask"][1] == 0).sum()) == 3
    opts = options("fastv", budget=3, layer=1)
    got = compiled_logits(model, batch, opts)
    torch._dynamo.reset()
    ref = compiled_logits(model, alone, opts)
    n = alone["input_ids"].shape[1]
    torch.testing.assert_close(got[1, :n], ref[0], atol=2e-5, rtol=1e-4)
    want = oracle_logits(model, batch, oracle_spec("fastv", budget=3, layer=1))
    torch.testing.assert_close(got[valid(batch)], want[valid(batch)], atol=2e-5, rtol=1e-4)


def test_two_models_in_one_process_share_the_compiled_code():
    """A second model with another head size recompiles the same code object; Dynamo then
    makes SDPA's scale a SymFloat graph value, which scoring must take as it is."""
    for spec in (TinySpec(hidden=64, heads=4), TinySpec(hidden=64, heads=8, kv_heads=4)):
        model = tiny_llava(spec)
        inputs = make_inputs(spec, batch=2, pad=(0, 2))
        got = compiled_logits(model, inputs, options("fastv", budget=3, layer=1))
        want = oracle_logits(model, inputs, oracle_spec("fastv", budget=3, layer=1))
        torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=2e-5, rtol=1e-4)
        assert last_report().sites


def test_dynamic_true_is_pruned():
    """torch.compile(..., dynamic=True) once left the graph unpruned (an .item() on a SymInt)."""
    spec = TinySpec()
    model = tiny_llava(spec)
    with torch.no_grad():
        model(**make_inputs(spec))
        fast = torch.compile(model, backend="vtp", dynamic=True,
                             options=options("fastv", budget=3, layer=1))
        for suffix in (3, 6):
            inputs = make_inputs(spec, batch=2, pad=(0, 2), suffix=suffix)
            got = fast(**inputs).logits
            want = oracle_logits(model, inputs, oracle_spec("fastv", budget=3, layer=1))
            torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=2e-5, rtol=1e-4)
            assert last_report().sites


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
    from tests.helpers import REPORTS
    start = len(REPORTS)
    got = compiled_logits(model, inputs, options("fastv", budget=4, layer=1))
    want = oracle_logits(model, inputs, oracle_spec("fastv", budget=4, layer=1))
    torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=2e-5, rtol=1e-4)
    assert sum(len(r.sites) for r in REPORTS[start:]) == 1


@pytest.mark.parametrize("batch,static", [(1, True), (2, False)])
def test_a_one_row_batch_compiles_at_a_static_width(batch, static):
    """One row: its visual count is the spliced features' (a static shape), so the site's width
    is a plain int (``L - V + budget`` plus the dead slot of a row that lost tokens) and the
    layers after it compile with static sizes. Two rows: each row's count is data, so is the
    width. Both equal the oracle."""
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=batch, prefix=3, suffix=4)
    graphs = []

    def inner(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    opts = options("fastv", budget=5, layer=1, inner=inner)
    got = compiled_logits(model, inputs, opts)
    want = oracle_logits(model, inputs, oracle_spec("fastv", budget=5, layer=1))
    torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=2e-5, rtol=1e-4)
    (sel,) = [n for gm in graphs for n in gm.graph.nodes if n.target is torch.ops.vtp.select_keep.default]
    L = inputs["input_ids"].shape[1]
    width = sel.args[4] if len(sel.args) > 4 else 0
    assert width == (L - spec.visual_tokens + 5 + 1 if static else 0)
    W = sel.meta["val"][0].shape[1]
    assert isinstance(W, int) == static
