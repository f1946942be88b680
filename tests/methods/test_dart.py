"""DART end to end: options, oracle equivalence (forward, generate) against the mask oracle,
keep-all identity, explain."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import vtp_compile
from vtp_compile.config import PruneConfig
from vtp_compile.methods.registry import get_method
from vtp_compile.testing.oracle_mask import Pruning
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import (assert_keep_all_is_identity, check_forward_batches, check_generate,
                       mask_oracle_logits, options)
from ..strategies import NO_SHRINK, varied, keeps, prompt_batches, tiny_specs

SETTINGS = dict(phases=NO_SHRINK)


def test_defaults():
    cfg = PruneConfig.from_options({"method": "dart", "budget": 64})
    (site,) = get_method("dart").sites(cfg, 32)
    assert (site.layer, site.keep.budget, cfg.params) == (2, 64, {"layer": 2, "pivots": 4})


@pytest.mark.parametrize("bad", [{"pivots": 0}, {"layer": 0}, {"pivot": 2}])
def test_bad_options_are_errors(bad):
    with pytest.raises(ValueError, match="pivots|layer|valid options"):
        PruneConfig.from_options({"method": "dart", "budget": 16, **bad})


@st.composite
def cases(draw):
    spec = draw(tiny_specs(layers=(2, 3)))
    params = {"layer": draw(st.integers(1, spec.layers - 1)), "pivots": draw(st.integers(1, 4))}
    return spec, [draw(prompt_batches()) for _ in range(2)], draw(keeps(spec.visual_tokens)), params


@settings(max_examples=2, **SETTINGS)
@given(varied(cases()))
def test_forward_equals_mask_oracle(case):
    spec, batches, keep, params = case
    check_forward_batches(spec, batches, options("dart", **keep, **params), Pruning("dart", **keep, **params))


@settings(max_examples=2, **SETTINGS)
@given(varied(cases()))
def test_generate_equals_mask_oracle(case):
    spec, batches, keep, params = case
    check_generate(spec, batches[0], options("dart", **keep, **params), Pruning("dart", **keep, **params))


def test_keep_all_is_identity():
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    assert_keep_all_is_identity(model, inputs, "dart", spec.visual_tokens)


def test_explain_reports_the_oracle_selection():
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1), tiles=2)
    with torch.no_grad():
        model(**inputs)
    (site,) = vtp_compile.explain(model, inputs, {"method": "dart", "budget": 7}).sites
    assert (site.name, site.layer, site.visual_count, site.kept) == ("dart", 2, 16, 7)
    assert 0 < site.flops_saved < site.flops_total and site.kv_bytes_saved > 0
    _, kept = mask_oracle_logits(model, inputs, Pruning("dart", budget=7))
    vis = [torch.nonzero(r).flatten().tolist() for r in inputs["input_ids"] == spec.image_token_id]
    assert [[v.index(p) for p in k] for k, v in zip(kept, vis)] == site.kept_visual_index.tolist()
