"""Pruning into transformers' static cache (``generate(..., cache_implementation="static")``,
vtp_compile/passes/kv/static.py): greedy tokens equal to the mask oracle's (which runs
without any cache), the positional layout in every layer's buffer, one decode graph for every
step, and the methods that need the dynamic cache refused with one warning."""
import logging

import pytest
import torch

import vtp_compile
from vtp_compile import backend
from vtp_compile.graph.fx_utils import is_static_cache_write
from vtp_compile.kernels.cache import dead_columns
from tests.helpers import REPORTS
from vtp_compile.testing import families as F
from vtp_compile.testing import support
from vtp_compile.testing.multiplex import Multiplex
from vtp_compile.testing.oracle_mask import Pruning, masked_generate

from ..families.test_families import ROWS, _opts, _pruning
from ..helpers import assert_tokens_match, record_case

STATIC = {"do_sample": False, "cache_implementation": "static"}


def _generate(model, inputs, n, **kw):
    return model.generate(**inputs, max_new_tokens=n, **STATIC, **kw)


@pytest.mark.parametrize("family", list(support.STATIC_CACHE_METHODS))
def test_every_method_into_a_static_cache_equals_the_mask_oracle(family):
    """Ragged rows (one image, two images, text only), left-padded, every method of
    ``support.METHODS`` (layer sites, multi-stage PDrop/SparseVLM, CDPruner at the encoder) and,
    on LLaVA, VisionZip (vision internals by ``attach``) from one trace: four greedy tokens equal
    to the oracle's (the prefill, then three decode steps that read the positional buffers);
    keep-all equals the unpruned static generate; every decode step runs the same graph."""
    model = F.build_model(family)
    if "visionzip" in support.STATIC_CACHE_METHODS[family]:   # the vision internals it reads
        model = vtp_compile.attach(model)
    inputs = F.make_inputs(family, model, ROWS, padding_side="left", seed=1)
    visual = F.visual_positions(family, model, inputs)
    cases = {m: (_opts(family, m), _pruning(family, m)) for m in support.METHODS}
    if "visionzip" in support.STATIC_CACHE_METHODS[family]:
        cases["visionzip"] = ({"method": "visionzip", "budget": 3, "inner_backend": "eager"},
                              Pruning("visionzip", budget=3))
    assert set(cases) == set(support.STATIC_CACHE_METHODS[family])
    mux = Multiplex({**{m: c[0] for m, c in cases.items()},
                     "keep-all": _opts(family, budget=100_000)})
    failures = []
    with torch.no_grad():
        model(**inputs)
        want = {m: masked_generate(model, inputs, visual, p, 4) for m, (_, p) in cases.items()}
        unpruned = _generate(model, inputs, 4)
        model.compile(backend=mux)
        try:
            for m in cases:
                with mux.select(m):
                    out = _generate(model, inputs, 4)
                tokens, margins, _ = want[m]
                try:
                    assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], tokens, margins)
                    assert any(r.phase == "prefill" and r.sites for r in mux.reports[m]), "nothing was pruned"
                    record_case("static-cache/generate")
                except AssertionError as e:
                    failures.append(f"{m}: {e}")
            with mux.select("keep-all"):
                assert torch.equal(_generate(model, inputs, 4), unpruned)
        finally:
            model._compiled_call_impl = None
    assert not failures, "\n".join(failures)
    # three decode steps, one decode graph (the buffers' shapes never change; the counter is a tensor)
    phases = [r.phase for r in mux.reports["fastv"]]
    assert phases.count("decode") == 1, phases


def test_unpadded_prompts_of_two_lengths_equal_the_mask_oracle():
    """Without padding transformers passes no mask to a static-cache prefill and cuts the buffers
    to the first ``q_len`` slots (SDPA's causal alignment is right there); in a compacted layer
    ``q_len`` is the kept count, so the cut is widened to the prompt and the queries get the
    causal mask of their positions. Batch 1, then another prompt length (a dynamic-shape
    prefill, where ``q_len`` is symbolic): FastV, PDrop (its own-attention scores) and DivPrune,
    three greedy tokens each equal to the mask oracle's."""
    family = "llava"
    model = F.build_model(family)
    batches = [F.make_inputs(family, model, [row], padding_side="left", seed=2)
               for row in (ROWS[0], F.RowSpec(6, 3, (F.ImageSpec(),)))]
    methods = ("fastv", "pdrop", "divprune")
    mux = Multiplex({m: _opts(family, m) for m in methods})
    with torch.no_grad():
        model(**batches[0])
        want = [{m: masked_generate(model, x, F.visual_positions(family, model, x), _pruning(family, m), 3)
                 for m in methods} for x in batches]
        model.compile(backend=mux)
        try:
            for x, w in zip(batches, want):
                assert bool(x["attention_mask"].all())
                for m in methods:
                    with mux.select(m):
                        out = _generate(model, x, 3)
                    assert_tokens_match(out[:, x["input_ids"].shape[1]:], w[m][0], w[m][1])
                    record_case("static-cache/generate")
        finally:
            model._compiled_call_impl = None
    for m in methods:
        assert sum(1 for r in mux.reports[m] if r.phase == "prefill" and r.sites) == 2, (m, [r.skipped for r in mux.reports[m]])


def test_buffers_hold_positions_with_the_removed_ones_dead():
    """After a pruned prefill (FastV at layer 2, budget 3, one left-padded row), every layer's
    value buffer marks exactly the padding and the removed visual positions dead, keeps the
    others live at their own positions, and every layer's counter stands at the prompt length
    plus the decoded tokens."""
    from transformers import StaticCache
    family = "llava"
    model = F.build_model(family)
    inputs = F.make_inputs(family, model, ROWS[:1] + ROWS[2:], padding_side="left", seed=1)
    visual = F.visual_positions(family, model, inputs)
    L = inputs["input_ids"].shape[1]
    with torch.no_grad():
        model(**inputs)
        cache = StaticCache(config=model.config, max_cache_len=L + 3)
        fast = torch.compile(model, backend="vtp", options=_opts(family))
        fast(**inputs, past_key_values=cache, use_cache=True)
    _, kept = _oracle_kept(model, inputs, visual)
    real = inputs["attention_mask"].bool()
    for layer in cache.layers:
        _, pos = dead_columns(layer.values)
        assert int(layer.cumulative_length) == L
        for b in range(real.shape[0]):
            live = real[b] & ~(visual[b] & ~kept[b])
            assert torch.equal(pos[b, :L], ~live), f"row {b}"
            assert not pos[b, L:].any()


def _oracle_kept(model, inputs, visual):
    from vtp_compile.testing.oracle_mask import masked_forward
    logits, kept_rows = masked_forward(model, inputs, visual, _pruning("llava"))
    kept = torch.zeros_like(visual)
    for b, row in enumerate(kept_rows):
        kept[b, list(row)] = True
    return logits, kept


@pytest.mark.parametrize("method", ["dstp", "alvts"])
def test_dynamic_cache_methods_are_refused_with_one_warning(method, caplog, monkeypatch):
    """DSTP (its reserve swaps in decode) and ALVTS (per-layer routes) address the dynamic
    cache's compacted layout: with a static cache they run unpruned, equal to the uncompiled
    model, with one warning naming the cache."""
    monkeypatch.setattr(backend, "_warned_static", False)
    opts = {"method": method, "inner_backend": "eager", "budget": 3, "layer": 1}
    if method == "alvts":
        opts["rank"] = 3
    warns = _refused_with_one_warning("llava", opts, caplog)
    assert method in warns[0], warns


def _refused_with_one_warning(family: str, opts: dict, caplog) -> list[str]:
    """Generate into a static cache with ``opts``: the uncompiled model's tokens, nothing
    pruned, one warning about the static cache (returned)."""
    model = F.build_model(family)
    inputs = F.make_inputs(family, model, ROWS[:2], padding_side="left", seed=1)
    with torch.no_grad():
        model(**inputs)
        want = _generate(model, inputs, 2)
        start = len(REPORTS)
        model.compile(backend="vtp", options=opts)
        try:
            with caplog.at_level(logging.INFO, logger="vtp_compile"):
                got = _generate(model, inputs, 2)
        finally:
            model._compiled_call_impl = None
    assert torch.equal(got, want)
    assert not any(r.sites for r in REPORTS[start:])
    warns = [r.message for r in caplog.records if r.levelno == logging.WARNING and "static KV cache" in r.message]
    assert len(warns) == 1, [r.message for r in caplog.records]
    return warns


def test_sliding_window_buffers_are_refused_with_one_warning(caplog, monkeypatch):
    """Gemma 3's sliding-window layers keep shorter static buffers that roll: unpruned, equal to
    the uncompiled model, one warning saying why and what prunes instead."""
    monkeypatch.setattr(backend, "_warned_static", False)
    (family,) = support.STATIC_CACHE_REFUSED
    warns = _refused_with_one_warning(family, _opts(family), caplog)
    assert "sliding-window" in warns[0] and "dynamic cache" in warns[0], warns


@pytest.mark.parametrize("family", [f for f in support.static_cache_families()
                                    if f not in support.STATIC_CACHE_METHODS])
def test_fastv_into_a_static_cache_on_every_family(family, monkeypatch):
    """Every other family vtp prunes with ``generate`` (but those refused: Gemma 3, above):
    FastV into a static cache, ragged left-padded rows, three greedy tokens equal to the mask
    oracle's."""
    for k, v in support.DYNAMO.get(family, {}).items():
        monkeypatch.setattr(torch._dynamo.config, k, v)
    model = F.build_model(family)
    inputs = F.make_inputs(family, model, ROWS, padding_side="left", seed=1)
    visual = F.visual_positions(family, model, inputs)
    start = len(REPORTS)
    with torch.no_grad():
        model(**inputs)
        tokens, margins, _ = masked_generate(model, inputs, visual, _pruning(family), 3)
        model.compile(backend="vtp", options=_opts(family))
        try:
            out = _generate(model, inputs, 3)
        finally:
            model._compiled_call_impl = None
    assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], tokens, margins)
    assert any(r.phase == "prefill" and r.sites for r in REPORTS[start:]), "nothing was pruned"
    record_case("static-cache/family")


@pytest.mark.inductor
def test_static_generate_through_inductor_equals_the_mask_oracle():
    """What HF documents as fast generation: a static cache under Inductor. FastV, two
    left-padded rows, three greedy tokens equal to the oracle's."""
    family = "llava"
    model = F.build_model(family)
    inputs = F.make_inputs(family, model, ROWS[:2], padding_side="left", seed=1)
    visual = F.visual_positions(family, model, inputs)
    with torch.no_grad():
        model(**inputs)
        tokens, margins, _ = masked_generate(model, inputs, visual, _pruning(family), 3)
        model.compile(backend="vtp", options={**_opts(family), "inner_backend": "inductor"})
        try:
            out = _generate(model, inputs, 3)
        finally:
            model._compiled_call_impl = None
    assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], tokens, margins)
    record_case("static-cache/inductor")


def test_only_4d_writes_on_the_sequence_dim_count():
    g = torch.fx.symbolic_trace(lambda b, i, x: (b.index_copy_(2, i, x), b.index_copy(1, i, x)))
    nodes = [n for n in g.graph.nodes if n.op == "call_method"]
    for n, v in zip(nodes, (torch.zeros(1, 2, 8, 4),) * 2):
        n.args[0].meta["example_value"] = v
    assert [is_static_cache_write(n) for n in nodes] == [True, False]


def test_a_graph_left_unpruned_refuses_a_pruned_cache():
    """A graph vtp leaves unpruned (here: no attention at all) that receives a cache whose dead
    slots a pruned prefill marked raises, naming why it was left unpruned; an unmarked cache
    runs as usual."""
    from vtp_compile.kernels.cache import POSITIONAL
    torch._dynamo.reset()
    f = torch.compile(lambda cache: cache * 2, backend="vtp", options={"inner_backend": "eager"})
    clean = torch.randn(1, 2, 6, 4)
    torch.testing.assert_close(f(clean), clean * 2)
    dead = torch.tensor([[False, True, False, False, False, False]])
    marked = torch.ops.vtp.mark_dead(clean, dead, True, POSITIONAL)
    with pytest.raises(RuntimeError, match="pruned prefill.*no scaled_dot_product_attention"):
        f(marked)
