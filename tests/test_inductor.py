"""Every method through Inductor (the default inner backend), on drawn model configs.

For each method of ``available_methods()``, hypothesis draws a tiny LLaVA as users' configs vary
(hidden size and head dim, heads and grouped-query ratio including multi-query, depth, vision
strategy and layers, image grid: ``strategies.model_specs``), the method's options and keep rule
(``strategies.method_cases``: budget 1, V-1, V, > V, ratios) and prompt batches (lengths, padding
side and amount, images per row including text-only rows, batch size). One Dynamo trace feeds two
rewrites (``testing/multiplex.py``): lowered by Inductor and by the eager inner backend. Every
batch compares the Inductor result with the eager one (the same rewrite, another lowering) and
with the mask oracle (an independent eager implementation), in prefill (forward: one dynamic
graph that every batch reuses: checked, one compile) and in decode (``generate``: a static
prefill graph, then the decode graphs).

``not_the_simplest``: hypothesis' first examples are its simplest (the smallest model, the first
option of every list); they are rejected, so each CI run draws new configs, and a failure replays
from the example database or the printed ``@reproduce_failure`` line.
"""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import vtp_compile
from vtp_compile.config import PruneConfig
from vtp_compile.methods.registry import get_method
from vtp_compile.testing.multiplex import Multiplex
from vtp_compile.testing.oracle_mask import masked_forward, masked_generate
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from .helpers import FULL, assert_tokens_match, kept_positions, record_case
from .strategies import NO_SHRINK, method_cases, model_specs, not_the_simplest, prompt_batches

pytestmark = pytest.mark.inductor
METHODS = vtp_compile.available_methods()
# batches per forward example: the first compiles a dynamic graph, the rest reuse it (each one a
# generated case, checked against both references)
BATCHES = 8 if FULL else 5


def _draw_case(data, method, gen=False):
    # the mask oracle reads Nüwa's CLS internals with the "default" strategy only ("full" is
    # checked against oracle_nuwa in tests/methods/test_nuwa.py)
    strategies = ("default",) if method == "nuwa" else ("default", "full")
    tower = (2, 3) if get_method(method).vision_internals else (1, 3)   # attach reads layer -2
    spec = data.draw(model_specs(strategies=strategies, vision_layers=tower), label="model")
    opts, pruning = data.draw(method_cases(method, spec), label="options")
    return spec, opts, pruning


def _model(spec, opts):
    model = tiny_llava(spec)
    if get_method(opts["method"]).needs_vision(PruneConfig.from_options(opts)):
        vtp_compile.attach(model)
    return model


def _mux(opts):
    return Multiplex({"inductor": opts, "eager": {**opts, "inner_backend": "eager"}})


def _mark_dynamic(inputs):
    """Rows and prompt length dynamic from this call on (what Dynamo's automatic dynamic shapes
    does on a second call whose sizes differ, for both sizes a later batch changes): one dynamic
    graph then serves every later batch."""
    for name, dims in (("input_ids", (0, 1)), ("attention_mask", (0, 1))):
        for dim in dims:
            torch._dynamo.maybe_mark_dynamic(inputs[name], dim)


def _compiles(mux):
    return sum(r.phase == "prefill" for r in mux.reports["inductor"])


def _pruned(mux):
    return any(r.phase == "prefill" and r.sites for r in mux.reports["inductor"])


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=2 if FULL else 1, phases=NO_SHRINK)
@given(data=st.data())
def test_forward_through_inductor(method, data):
    spec, opts, pruning = _draw_case(data, method)
    # Nüwa takes one patch grid per row: every row holds the same number of images (a ragged
    # batch is refused with a clear error: tests/methods/test_nuwa.py)
    ragged = method != "nuwa"
    # one dynamic graph serves every batch (test_generate_through_inductor compiles each
    # method's static prefill graph): no batch has one row, and all hold the first's number of
    # images (Dynamo specializes on both: prompt_batches)
    batches = [data.draw(prompt_batches(max_batch=4, ragged=ragged, min_batch=2, min_images=2),
                         label="batch 0")]
    images = sum(row[2] for row in batches[0]["rows"])
    # Nüwa's graph also holds the images per row (one patch grid per row): the first batch's
    per_row = {} if ragged else {"images": (batches[0]["rows"][0][2],)}
    batches += [data.draw(prompt_batches(max_batch=4, ragged=ragged, min_batch=2,
                                         total_images=images, **per_row), label=f"batch {i}")
                for i in range(1, BATCHES)]
    not_the_simplest(data)
    model, mux = _model(spec, opts), _mux(opts)
    fast = None
    with torch.no_grad():
        for i, batch in enumerate(batches):
            inputs = make_inputs(spec, **batch)
            if fast is None:
                model(**inputs)
                fast = torch.compile(model, backend=mux)
            if i == 0:
                _mark_dynamic(inputs)
            with mux.select("inductor"):
                got = fast(**inputs).logits
            with mux.select("eager"):
                same_rewrite = fast(**inputs).logits
            visual = inputs["input_ids"] == spec.image_token_id
            want, kept = masked_forward(model, inputs, visual, pruning)
            real = inputs["attention_mask"].bool()
            # ALVTS routes (every token's logits are defined; kept: the routes per layer)
            keep = real if method == "alvts" else kept_positions(inputs, visual, kept)
            torch.testing.assert_close(got[real], same_rewrite[real], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(got[keep], want[keep], atol=1e-4, rtol=1e-4)
            record_case("forward/inductor")
    assert _pruned(mux), "nothing was pruned"
    assert _compiles(mux) == 1, f"{_compiles(mux)} prefill compiles: the dynamic graph was not reused"


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=1, phases=NO_SHRINK)
@given(data=st.data())
def test_generate_through_inductor(method, data):
    """Left-padded (what ``generate`` needs); the prefill graph and a decode step that reads the
    compacted cache (DSTP: two, its decode site re-scores the active set)."""
    spec, opts, pruning = _draw_case(data, method)
    batch = data.draw(prompt_batches(max_batch=4, ragged=method != "nuwa"), label="batch")
    not_the_simplest(data)
    n = 3 if method == "dstp" else 2
    model, mux = _model(spec, opts), _mux(opts)
    inputs = make_inputs(spec, **dict(batch, side="left"))
    visual = inputs["input_ids"] == spec.image_token_id
    with torch.no_grad():
        want, margins, _ = masked_generate(model, inputs, visual, pruning, n)
        model(**inputs)
        model.compile(backend=mux)
        try:
            for name in ("inductor", "eager"):
                with mux.select(name):
                    out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
                assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], want, margins)
        finally:
            model._compiled_call_impl = None
    record_case("generate/inductor")
    assert _pruned(mux), "nothing was pruned"


def test_dstp_generate_through_inductor_equals_oracle():
    """DSTP's decode ops read and update runtime state; Inductor must call them every step (a
    case known to swap the active set)."""
    from vtp_compile.testing.oracle_dstp import dstp_generate

    spec = TinySpec(layers=3, seed=1)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2), tiles=2)
    want, margins, hist = dstp_generate(model, inputs["input_ids"], inputs["attention_mask"],
                                        inputs["pixel_values"], 3, None, 1, 0.0, 5)
    assert hist[1] != hist[0], "this case should swap the active set"
    with torch.no_grad():
        model(**inputs)
        model.compile(backend="vtp", options={"method": "dstp", "budget": 3, "layer": 1, "tau": 0.0,
                                              "reserve_by": "score"})
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], want, margins)
    record_case("generate/inductor")


def test_a_key_behind_grouped_query_expand_compiles():
    """The drawn case that failed: Inductor froze the layout of a compacted key behind GQA's
    expand by sorting its strides by guarding hints, which the compacted width has none of
    (vtp_compile/inner.py: unbacked_stride_order). A chain of random then FastV, hidden 36,
    3 heads, 1 KV head, a ragged left-padded batch of 3."""
    spec = TinySpec(hidden=36, heads=3, kv_heads=1, layers=3, intermediate=64)
    opts = {"method": "chain", "stages": [{"method": "random", "budget": 5},
                                          {"method": "fastv", "budget": 2, "layer": 1}]}
    model, mux = _model(spec, opts), _mux(opts)
    inputs = make_inputs(spec, rows=[(2, 3, 1), (5, 1, 1), (0, 4, 1)], side="left", pad=(1, 0, 2), seed=3)
    _inductor_equals_eager(model, mux, [inputs])


def _inductor_equals_eager(model, mux, batches):
    """One compiled model over ``batches`` (the first compiles a static graph, the next a dynamic
    one): the Inductor lowering equals the eager one at every real position, and it pruned."""
    with torch.no_grad():
        model(**batches[0])
        fast = torch.compile(model, backend=mux)
        for inputs in batches:
            with mux.select("inductor"):
                got = fast(**inputs).logits
            with mux.select("eager"):
                same_rewrite = fast(**inputs).logits
            real = inputs["attention_mask"].bool()
            torch.testing.assert_close(got[real], same_rewrite[real], atol=1e-4, rtol=1e-4)
    assert _pruned(mux)


def test_frame_priority_survives_peak_memory_reordering():
    """The drawn case that failed: Inductor's peak-memory reordering ran the scatter that built
    ``vtp::frame_priority``'s ranks after the fused kernel that read them, which then read zeros
    (every frame kept its first tokens). The ranks are now argsorts (kernels/ranks.py: nothing to
    reorder); the reordering is switched on here, as it is by default on GPUs. VidCom2 with
    ``per_frame="unique"``, a static graph of 2 rows, then the dynamic graph on 3 rows."""
    spec = TinySpec(hidden=192, layers=3, heads=6, kv_heads=2, intermediate=392, image_size=16,
                    patch=8, vision_hidden=32, vision_layers=1, seed=944, strategy="full")
    opts = {"method": "vidcom2", "budget": 5, "min_per_frame": 1, "per_frame": "unique",
            "inductor_config": {"reorder_for_peak_memory": True}}
    model, mux = _model(spec, opts), _mux(opts)
    batches = [make_inputs(spec, rows=[(7, 5, 1), (8, 3, 1)], side="left", pad=(0, 3), seed=67, tiles=2),
               make_inputs(spec, rows=[(6, 12, 1), (8, 9, 2), (6, 1, 2)], side="left", pad=(2, 3, 2),
                           seed=68, tiles=2)]
    _inductor_equals_eager(model, mux, batches)


def test_an_index_checked_before_it_is_defined_compiles_without_the_checks():
    """The drawn case that failed: Inductor's C++ code for SparseVLM's dynamic graph checked an
    index's bounds (``TORCH_CHECK(tmp27 < ks3, ...)``) before the line that defines it, in a
    transposed vectorized loop, and g++ rejected it (inner.KNOWN_FAILURES). vtp compiles such a
    graph again without Inductor's index bounds checks (one warning); the result equals the eager
    lowering. Without the retry this raised ``CppCompileError`` (torch 2.13, x86-64 CPU)."""
    spec = TinySpec(hidden=16, layers=3, heads=1, kv_heads=1, intermediate=16, image_size=24,
                    patch=8, vocab=128, vision_hidden=32, vision_layers=3, seed=4864)
    opts = {"method": "sparsevlm", "budget": 14, "recycle": True}
    model, mux = _model(spec, opts), _mux(opts)
    batches = [make_inputs(spec, rows=[(10, 9, 1), (3, 7, 1), (10, 10, 1), (6, 3, 1)], side="right",
                           pad=(3, 3, 1, 3), seed=13, tiles=2),
               make_inputs(spec, rows=[(11, 4, 1), (5, 8, 1), (10, 2, 0), (5, 10, 2)], side="left",
                           pad=(1, 1, 1, 3), seed=51, tiles=2)]
    _mark_dynamic(batches[0])       # the failing graph is the dynamic one: compile it first
    _inductor_equals_eager(model, mux, batches)
    assert _compiles(mux) == 1
