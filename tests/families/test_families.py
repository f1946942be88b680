"""Every supported VLM family, pruned and checked against the family-agnostic mask oracle
(vtp_compile/testing/oracle_mask.py), from the table the README's support matrix prints
(vtp_compile/testing/support.py)."""
import pytest
import torch

from vtp_compile.passes.manager import REPORTS
from vtp_compile.testing import families as F
from vtp_compile.testing import support
from vtp_compile.testing.oracle_mask import Pruning

from ..helpers import check_against_mask_oracle, record_case

ROWS = [F.RowSpec(3, 4, (F.ImageSpec(),)), F.RowSpec(5, 2, (F.ImageSpec(), F.ImageSpec())),
        F.RowSpec(4, 3, ())]                      # one image, two images, a text-only row
PRUNED = [(f, p) for f, paths in support.PRUNED.items() for p in paths]


@pytest.fixture
def dynamo_for(monkeypatch):
    def apply(family):
        for k, v in support.DYNAMO.get(family, {}).items():
            monkeypatch.setattr(torch._dynamo.config, k, v)
    return apply


def _setup(family, rows=ROWS, seed=1):
    model = F.build_model(family)
    inputs = F.make_inputs(family, model, rows, padding_side="left", seed=seed)
    return model, inputs, F.visual_positions(family, model, inputs)


def _opts(family, method="fastv", **keep):
    keep = keep or {"budget": 3}
    layer = {"layer": support.layer_for(family)} if method in ("fastv", "acgr") else {}
    return {"method": method, "inner_backend": "eager", **keep, **layer}


def _pruning(family, method="fastv", **keep):
    keep = keep or {"budget": 3}
    return Pruning(method, layer=support.layer_for(family), **keep)


@pytest.mark.parametrize("family,path", PRUNED)
def test_fastv_equals_the_mask_oracle(family, path, dynamo_for):
    """Forward: ragged rows (one image, two images, text only), left-padded. Generate: batch 1
    with two images (the ragged batch runs in the methods test below)."""
    dynamo_for(family)
    model, inputs, visual = _setup(family, ROWS if path == "forward" else ROWS[1:2])
    start = len(REPORTS)
    check_against_mask_oracle(model, inputs, visual, path, _opts(family), _pruning(family), 4)
    record_case(f"family/{path}")
    assert any(r.phase == "prefill" and r.sites for r in REPORTS[start:]), "nothing was pruned"


# a text-only batch is its own graph (no vision inputs): checked on the families whose text
# positions, masks or layers differ from LLaVA's (M-RoPE, deepstack, hybrid, token types, prefix
# blocks, pixel-free Pixtral); every family's ragged batches hold a text-only row
TEXT_ONLY = ("llava_onevision", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "gemma3", "paligemma", "mistral3")


@pytest.mark.parametrize("family", list(support.PRUNED))
def test_keep_all_and_text_only_are_the_unpruned_model(family, dynamo_for):
    """A budget above every visual count (and, on TEXT_ONLY families, a text-only batch) through
    the same compiled model: the unpruned model's outputs."""
    dynamo_for(family)
    model, inputs, _ = _setup(family)
    batches = [inputs]
    if family in TEXT_ONLY:
        batches.append(F.make_inputs(family, model, [F.RowSpec(3, 2, ()), F.RowSpec(6, 1, ())], seed=3))
    path = support.PRUNED[family][0]
    with torch.no_grad():
        model(**inputs)
        opts = _opts(family, budget=100_000)
        if path == "forward":
            fast = torch.compile(model, backend="vtp", options=opts)
            for x in batches:
                real = x["attention_mask"].bool()
                torch.testing.assert_close(fast(**x).logits[real], model(**x).logits[real],
                                           atol=3e-5, rtol=1e-4)
        else:
            want = [model.generate(**x, max_new_tokens=2, do_sample=False) for x in batches]
            model.compile(backend="vtp", options=opts)
            for x, w in zip(batches, want):
                assert torch.equal(model.generate(**x, max_new_tokens=2, do_sample=False), w)
    record_case("family/keep-all", len(batches))


@pytest.mark.parametrize("family,method", [(f, m) for f, paths in support.PRUNED.items()
                                           if "generate" in paths for m in support.METHODS
                                           if m != "fastv"])
def test_methods_on_every_family(family, method, dynamo_for):
    dynamo_for(family)
    model, inputs, visual = _setup(family, seed=4)
    start = len(REPORTS)
    # two new tokens: the prefill and one decode step from the compacted cache (the
    # dynamic-shape decode graph is exercised per family by the fastv test)
    check_against_mask_oracle(model, inputs, visual, "generate", _opts(family, method),
                              _pruning(family, method), 2)
    assert any(r.phase == "prefill" and r.sites for r in REPORTS[start:])
    record_case("family/generate")


def _dstp(family):
    """DSTP around FastV with tau 0 (every decode step may swap the active set), default
    (coverage) reserve: the compiled options and the mask oracle's."""
    layer = support.layer_for(family)
    return ({"method": "dstp", "inner_backend": "eager", "budget": 3, "layer": layer, "tau": 0.0},
            Pruning("fastv", budget=3, layer=layer, dstp=(None, "coverage", 0.0)))


@pytest.mark.parametrize("family", list(support.EXTRA["dstp"]))
def test_dstp_on_families(family, dynamo_for):
    """Ragged rows, left-padded; three new tokens: the prefill with its reserve and two decode
    steps that re-score active and reserve."""
    dynamo_for(family)
    model, inputs, visual = _setup(family, seed=4)
    opts, pruning = _dstp(family)
    start = len(REPORTS)
    check_against_mask_oracle(model, inputs, visual, "generate", opts, pruning, 3)
    assert any(r.phase == "prefill" and any(s.reserve for s in r.sites) for r in REPORTS[start:])
    record_case("family/generate")


@pytest.mark.parametrize("family", support.REFUSED["dstp"])
def test_dstp_refuses_layers_it_cannot_mask(family, dynamo_for, caplog):
    """Linear-attention layers (Qwen3.5) cannot be kept from the reserve by masks; sliding-window
    layers (Gemma 3) cache another layout: the unpruned model's tokens, one log line why."""
    dynamo_for(family)
    model, inputs, _ = _setup(family, seed=4)
    start = len(REPORTS)
    with torch.no_grad(), caplog.at_level("INFO", logger="vtp_compile"):
        want = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        model.compile(backend="vtp", options=_dstp(family)[0])
        assert torch.equal(model.generate(**inputs, max_new_tokens=2, do_sample=False), want)
    assert not any(r.sites for r in REPORTS[start:])
    why = {"qwen3_5": "without attention", "gemma3": "sliding window"}[family]
    assert any("left unpruned" in r.getMessage() and why in r.getMessage() for r in caplog.records)


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


@pytest.mark.parametrize("family,method", [("gemma3", "sparsevlm"), ("qwen3_vl", "pdrop")])
def test_multi_stage_methods_left_unpruned_say_why(family, method, dynamo_for, caplog):
    """Where a second compaction cannot be planned (gemma3's sliding-window caches, Qwen3-VL's
    deepstack injections) the prefill runs unpruned with the reason logged, never a wrong answer
    or a crash."""
    dynamo_for(family)
    model, inputs, _ = _setup(family)
    start = len(REPORTS)
    with torch.no_grad(), caplog.at_level("INFO", logger="vtp_compile"):
        want = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        model.compile(backend="vtp", options={"method": method, "budget": 3, "inner_backend": "eager"})
        assert torch.equal(model.generate(**inputs, max_new_tokens=2, do_sample=False), want)
    assert not any(r.sites for r in REPORTS[start:])
    assert any("left unpruned" in r.getMessage() for r in caplog.records)
