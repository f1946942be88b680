"""Every supported VLM family, pruned and checked against the family-agnostic mask oracle
(vtp_compile/testing/oracle_mask.py), from the table docs/support.md's support matrix prints
(vtp_compile/testing/support.py)."""
import pytest
import torch

from tests.helpers import REPORTS
from vtp_compile.testing import families as F
from vtp_compile.testing import support
from vtp_compile.testing.multiplex import Multiplex
from vtp_compile.testing.oracle_mask import Pruning, masked_generate

from ..helpers import assert_tokens_match, check_against_mask_oracle, record_case
from .test_alvts import draw_selector_weights

ROWS = [F.RowSpec(3, 4, (F.ImageSpec(),)), F.RowSpec(5, 2, (F.ImageSpec(), F.ImageSpec())),
        F.RowSpec(4, 3, ())]                      # one image, two images, a text-only row
PRUNED = [(f, p) for f, paths in support.PRUNED.items() for p in paths]


def _setup(family, rows=ROWS, seed=1):
    model = F.build_model(family)
    inputs = F.make_inputs(family, model, rows, padding_side="left", seed=seed)
    return model, inputs, F.visual_positions(family, model, inputs)


def _opts(family, method="fastv", **keep):
    keep = keep or {"budget": 3}
    layer = {"layer": support.layer_for(family)} if method in ("fastv", "acgr", "dart") else {}
    extra = support.METHOD_OPTIONS.get(family, {}).get(method, {})
    return {"method": method, "inner_backend": "eager", **keep, **layer, **extra}


def _pruning(family, method="fastv", **keep):
    keep = keep or {"budget": 3}
    extra = {k: tuple(v) if isinstance(v, list) else v
             for k, v in support.METHOD_OPTIONS.get(family, {}).get(method, {}).items()}
    return Pruning(method, **{"layer": support.layer_for(family), **keep, **extra})


# a text-only batch is its own graph (no vision inputs): checked on the families whose text
# positions, masks or layers differ from LLaVA's (M-RoPE, deepstack, hybrid, token types, prefix
# blocks, pixel-free Pixtral); every family's ragged batches hold a text-only row
TEXT_ONLY = ("llava_onevision", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "gemma3", "paligemma", "mistral3")


@pytest.mark.parametrize("family,path", PRUNED)
def test_fastv_equals_the_mask_oracle(family, path, dynamo_for):
    """Forward: ragged rows (one image, two images, text only), left-padded. Generate: batch 1
    with two images (the ragged batch runs in the methods test below). On the family's first
    path the same trace (testing/multiplex.py) also checks keep-all: a budget above every visual
    count (and, on TEXT_ONLY families, a text-only batch) gives the unpruned model's outputs."""
    dynamo_for(family)
    model, inputs, visual = _setup(family, ROWS if path == "forward" else ROWS[1:2])
    keep_all = path == support.PRUNED[family][0]
    mux = Multiplex({"fastv": _opts(family), **({"keep-all": _opts(family, budget=100_000)} if keep_all else {})})
    with mux.select("fastv"):
        check_against_mask_oracle(model, inputs, visual, path, None, _pruning(family), 4, backend=mux)
    record_case(f"family/{path}")
    assert any(r.phase == "prefill" and r.sites for r in mux.reports["fastv"]), "nothing was pruned"
    if keep_all:
        with mux.select("keep-all"):
            _check_keep_all(family, model, path, mux)


def _check_keep_all(family, model, path, mux):
    batches = [F.make_inputs(family, model, ROWS, padding_side="left", seed=1)]
    if family in TEXT_ONLY:
        batches.append(F.make_inputs(family, model, [F.RowSpec(3, 2, ()), F.RowSpec(6, 1, ())], seed=3))
    with torch.no_grad():
        if path == "forward":
            fast = torch.compile(model, backend=mux)
            for x in batches:
                real = x["attention_mask"].bool()
                torch.testing.assert_close(fast(**x).logits[real], model(**x).logits[real],
                                           atol=3e-5, rtol=1e-4)
        else:
            want = [model.generate(**x, max_new_tokens=2, do_sample=False) for x in batches]
            model.compile(backend=mux)
            try:
                for x, w in zip(batches, want):
                    assert torch.equal(model.generate(**x, max_new_tokens=2, do_sample=False), w)
            finally:
                model._compiled_call_impl = None
    record_case("family/keep-all", len(batches))


def _dstp(family):
    """DSTP around FastV with tau 0 (every decode step may swap the active set), default
    (coverage) reserve: the compiled options and the mask oracle's."""
    layer = support.layer_for(family)
    return ({"method": "dstp", "inner_backend": "eager", "budget": 3, "layer": layer, "tau": 0.0},
            Pruning("fastv", budget=3, layer=layer, dstp=(None, "coverage", 0.0)))


# a method refused on a family: what its report (and the INFO line) must say
ALVTS = {"method": "alvts", "inner_backend": "eager", "budget": 3, "layer": 1, "rank": 3}
WHY_REFUSED = {("dstp", "qwen3_5"): "without attention", ("dstp", "gemma3"): "sliding window",
               ("alvts", "qwen3_5"): "not a bilinear form of the layer input",
               ("alvts", "gemma3"): "not a bilinear form of the layer input",
               ("acgr@2", "qwen3_5"): "merges removed tokens into kept ones at layer 2",
               ("pdrop", "gemma3"): "", ("pdrop", "qwen3_vl"): "",
               ("sparsevlm", "gemma3"): "", ("sparsevlm", "qwen3_vl"): ""}


@pytest.mark.parametrize("family", [f for f, paths in support.PRUNED.items() if "generate" in paths])
def test_methods_on_every_family(family, dynamo_for):
    """Every method of ``support.METHODS`` (and DSTP, ALVTS where ``support.EXTRA`` claims them) from one
    trace of the family's ``generate`` (testing/multiplex.py: each method rewrites its own copy of
    every graph): ragged rows, left-padded, greedy tokens equal to the mask oracle's. Two new
    tokens: the prefill and one decode step from the compacted cache (the dynamic-shape decode
    graph is exercised per family by the fastv test); DSTP three: the prefill with its reserve
    and two decode steps that re-score active and reserve. A method ``support.REFUSED`` lists for
    the family (multi-stage sites on Gemma 3 and Qwen3-VL; DSTP on linear-attention and
    sliding-window layers; ALVTS where per-head q/k norms make the logits non-bilinear) runs
    unpruned, equal to the uncompiled model, its report saying why. On the families ALVTS is
    claimed for, the model's q/k biases and norm weights are drawn (tests/families/test_alvts.py)
    so that its bias term and norm folding are exercised; the other methods see the same model."""
    dynamo_for(family)
    model, inputs, visual = _setup(family, seed=4)
    cases = {m: (_opts(family, m), _pruning(family, m), 2) for m in support.METHODS
             if m != "fastv" and family not in support.REFUSED.get(m, ())}
    if family in support.EXTRA["alvts"]:     # q/k biases, norm weights away from 0 and 1 (ALVTS)
        draw_selector_weights(model, 4)
    if family in support.EXTRA["dstp"]:
        cases["dstp"] = (*_dstp(family), 3)
    if "generate" in support.EXTRA["alvts"].get(family, ()):
        cases["alvts"] = (ALVTS, Pruning("alvts", budget=3, layer=1, rank=3), 2)
    refused = {m: {"dstp": _dstp(family)[0], "alvts": ALVTS}.get(m, {"method": m, "budget": 3, "inner_backend": "eager"})
               for m in ("dstp", "pdrop", "sparsevlm", "alvts") if family in support.REFUSED.get(m, ())}
    if family == "qwen3_5":      # ACGR's merge at a linear-attention layer (support.METHOD_OPTIONS)
        refused["acgr@2"] = {"method": "acgr", "budget": 3, "layer": 2, "inner_backend": "eager"}
    mux = Multiplex({**{m: c[0] for m, c in cases.items()}, **refused})
    failures = []
    with torch.no_grad():
        model(**inputs)
        want = {m: masked_generate(model, inputs, visual, pruning, n) for m, (_, pruning, n) in cases.items()}
        unpruned = model.generate(**inputs, max_new_tokens=3, do_sample=False) if refused else None
        model.compile(backend=mux)
        try:
            for m, (_, _, n) in cases.items():
                with mux.select(m):
                    out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
                tokens, margins, _ = want[m]
                try:
                    assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], tokens, margins)
                    assert any(r.phase == "prefill" and r.sites for r in mux.reports[m]), "nothing was pruned"
                    if m == "dstp":
                        assert any(r.phase == "prefill" and any(s.reserve for s in r.sites)
                                   for r in mux.reports[m]), "no reserve"
                    if m == "alvts":            # routed in every layer from 1
                        n_layers = model.config.get_text_config().num_hidden_layers
                        assert [s.layer for s in next(r for r in mux.reports[m] if r.phase == "prefill"
                                                      and r.sites).sites] == list(range(1, n_layers))
                    record_case("family/generate")
                except AssertionError as e:
                    failures.append(f"{m}: {e}")
            for m in refused:
                with mux.select(m):
                    got = model.generate(**inputs, max_new_tokens=3, do_sample=False)
                if not torch.equal(got, unpruned) or any(r.sites for r in mux.reports[m]):
                    failures.append(f"{m}: refused, yet not the unpruned model's tokens")
                why = [r.skipped for r in mux.reports[m] if r.skipped]    # what the INFO line says
                if not any(WHY_REFUSED[m, family] in w for w in why):
                    failures.append(f"{m}: no reason {WHY_REFUSED[m, family]!r} in {why}")
        finally:
            model._compiled_call_impl = None
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("family,path", list(support.NOT_PRUNED))
def test_unsupported_paths_run_unpruned_and_say_why(family, path, dynamo_for, caplog):
    if path == "generate":   # Qwen3-VL's flag breaks its direct forward inside Dynamo itself
        dynamo_for(family)
    model, inputs, _ = _setup(family)
    start = len(REPORTS)
    with torch.no_grad(), caplog.at_level("INFO", logger="vtp_compile"):
        model(**inputs)
        if path == "forward":
            want = model(**inputs).logits
            got = torch.compile(model, backend="vtp", options=_opts(family))(**inputs).logits
            real = inputs["attention_mask"].bool()
            torch.testing.assert_close(got[real], want[real], atol=3e-5, rtol=1e-4)
        else:
            want = model.generate(**inputs, max_new_tokens=2, do_sample=False)
            model.compile(backend="vtp", options=_opts(family))
            assert torch.equal(model.generate(**inputs, max_new_tokens=2, do_sample=False), want)
    assert not any(r.sites for r in REPORTS[start:])
    assert any("left unpruned" in r.getMessage() for r in caplog.records)
