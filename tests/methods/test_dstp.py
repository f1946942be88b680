"""DSTP's options, the sites it wraps around any layer-site base, and oracle equivalence over
bases and reserve rules (prefill logits equal the base's; greedy generate equals the mask
oracle's DSTP, which re-scores active ∪ reserve at every step)."""
import pytest
import torch

from vtp_compile.config import PruneConfig
from vtp_compile.methods.registry import get_method
from vtp_compile.sites import LayerSite, ReserveSite
from vtp_compile.testing.oracle_mask import Pruning
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import (assert_cache_holds, assert_tokens_match, compiled_generate, compiled_logits,
                       mask_oracle_generate, mask_oracle_logits, options, record_case, valid)


def test_defaults_wrap_fastv_at_layer_2():
    cfg = PruneConfig.from_options({"method": "dstp", "budget": 64})
    (site,) = get_method("dstp").sites(cfg, 32)
    assert isinstance(site, ReserveSite)
    assert (site.layer, site.reserve, site.tau, site.keep.budget) == (2, None, 0.2, 64)


def test_every_layer_site_method_is_a_base():
    assert {"fastv", "pdrop", "dart", "acgr"} <= set(get_method("dstp").bases())
    cfg = PruneConfig.from_options({"method": "dstp", "base": "pdrop", "budget": 8,
                                    "base_options": {"layers": [1, 3]}})
    sites = get_method("dstp").sites(cfg, 4)
    assert [type(s) for s in sites] == [LayerSite, ReserveSite] and [s.layer for s in sites] == [1, 3]


@pytest.mark.parametrize("bad, match", [
    ({"base": "random"}, "'base' must be a layer-site method"),
    ({"base": "divprune"}, "'base' must be a layer-site method"),
    ({"base": "dstp"}, "'base' must be a layer-site method"),
    ({"tau": 1.5}, "'tau' must be a number in"),
    ({"reserve": -1}, "'reserve' must be an int >= 0"),
    ({"layer": 0}, "'layer' must be an int >= 1"),
    ({"reserve_by": "random"}, "'reserve_by' must be one of"),
    ({"base_options": {"budget": 3}}, "may not set"),
    ({"base": "pdrop", "base_options": {"layers": "x"}}, "layers"),
    ({"active": 3}, "valid options"),
])
def test_bad_options_are_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig.from_options({"method": "dstp", "budget": 16, **bad})


# base, its options (compiled / oracle), reserve, reserve_by, tau, layers
# (FastV with the score reserve is tests/passes/test_shift.py's oracle)
CASES = [
    ("fastv", {"layer": 1}, {"layer": 1}, None, "coverage", 0.0, 3),
    ("dart", {"layer": 1, "pivots": 2}, {"layer": 1, "pivots": 2}, 4, "coverage", 0.0, 3),
    ("pdrop", {"layers": [1, 2]}, {"layers": (1, 2)}, None, "coverage", 0.0, 3),
]


@pytest.mark.parametrize("base, copts, oopts, reserve, by, tau, layers", CASES)
def test_generate_and_prefill_equal_the_mask_oracle(base, copts, oopts, reserve, by, tau, layers):
    spec = TinySpec(layers=layers, seed=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2), side="left", tiles=2)
    layer = copts.get("layer")
    base_opts = {k: v for k, v in copts.items() if k != "layer"}
    opts = options("dstp", budget=3, layer=layer, base=base, reserve=reserve, reserve_by=by, tau=tau,
                   base_options=base_opts or None)
    if base == "pdrop":   # prefill: the base method's logits (the reserve is never attended)
        got = compiled_logits(model, inputs, opts)
        want, _ = mask_oracle_logits(model, inputs, Pruning(base, budget=3, **oopts))
        torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=2e-5, rtol=1e-4)
        record_case("forward/eager")
    pruning = Pruning(base, budget=3, dstp=(reserve, by, tau), **oopts)
    want, margins, kept = mask_oracle_generate(model, inputs, pruning, 5)
    out = compiled_generate(model, inputs, opts, 5)
    assert_tokens_match(out.sequences[:, inputs["input_ids"].shape[1]:], want, margins)
    if by == "coverage" and base != "pdrop":
        V = spec.visual_tokens
        r = min(3 if reserve is None else reserve, V - 3)
        assert_cache_holds(out.past_key_values, inputs, [V - 3 - r] * 2, 4)
    record_case("generate/eager")


def test_coverage_reserve_differs_from_the_score_reserve():
    """The coverage reserve is not the next-best by score (what the base would pick anyway)."""
    spec = TinySpec(layers=3, seed=1)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=1, tiles=2)
    vis = inputs["input_ids"] == spec.image_token_id
    from vtp_compile.testing.oracle_mask import masked_forward, _Run, _hooked, decoder_layers
    res = {}
    for by in ("coverage", "score"):
        run = _Run(Pruning("fastv", budget=3, layer=1, dstp=(4, by, 0.2)), vis,
                   inputs["attention_mask"], len(decoder_layers(model)))
        with torch.no_grad(), _hooked(model, run):
            model(**inputs)
        res[by] = run.reserve[0]
    assert len(res["coverage"]) == len(res["score"]) == 4 and res["coverage"] != res["score"]
