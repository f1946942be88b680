"""CDPruner end to end: options, oracle equivalence (forward, generate) against the mask oracle,
keep-all and text-only identity, Inductor, explain. (theta's effect on the selection is checked
on the op in tests/kernels/test_cdpruner.py; the forward cases draw theta.)"""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import vtp_compile
from vtp_compile.config import PruneConfig
from vtp_compile.methods.registry import get_method
from vtp_compile.sites import EncoderSite
from vtp_compile.testing.oracle_mask import Pruning
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import (assert_text_only_is_identity, check_forward_batches, check_generate,
                       compiled_logits, mask_oracle_logits, options, valid)
from ..strategies import NO_SHRINK, varied, prompt_batches

SETTINGS = dict(phases=NO_SHRINK)


def test_defaults_and_registry():
    assert "cdpruner" in vtp_compile.available_methods()
    cfg = PruneConfig.from_options({"method": "cdpruner", "ratio": 0.25})
    (site,) = get_method("cdpruner").sites(cfg, 32)
    assert isinstance(site, EncoderSite) and not site.context and site.merge is None
    assert cfg.params == {"theta": 0.5}


@pytest.mark.parametrize("bad", [{"theta": 1.5}, {"theta": -0.1}, {"theta": True}, {"alpha": 1}])
def test_bad_options_are_errors(bad):
    with pytest.raises(ValueError, match="theta|valid options"):
        PruneConfig.from_options({"method": "cdpruner", "budget": 16, **bad})


@st.composite
def cases(draw):
    # hidden 64 >= visual tokens per row: the kernel keeps full rank for every budget drawn
    spec = TinySpec(image_size=draw(st.sampled_from([16, 24, 32])), layers=2, seed=draw(st.integers(0, 50)))
    batch = draw(prompt_batches(max_text=6))
    keep = draw(st.sampled_from([{"budget": 1}, {"budget": spec.visual_tokens // 2}, {"ratio": 0.25}]))
    theta = draw(st.sampled_from([0.0, 0.5, 0.9]))
    return spec, {**batch, "tiles": None}, keep, theta


@settings(max_examples=2, **SETTINGS)
@given(varied(cases()))
def test_forward_equals_mask_oracle(case):
    spec, batch, keep, theta = case
    check_forward_batches(spec, [batch], options("cdpruner", **keep, theta=theta),
                          Pruning("cdpruner", **keep, theta=theta))


def test_generate_equals_mask_oracle_with_left_padding():
    spec = TinySpec(image_size=32, layers=2, seed=4)
    check_generate(spec, dict(batch=2, pad=(0, 2), prefix=2, suffix=3), options("cdpruner", budget=5),
                   Pruning("cdpruner", budget=5))


def test_keep_all_is_identity():
    spec = TinySpec(image_size=24, layers=2)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    with torch.no_grad():
        ref = model(**inputs).logits
    got = compiled_logits(model, inputs, options("cdpruner", budget=spec.visual_tokens))
    torch.testing.assert_close(got[valid(inputs)], ref[valid(inputs)], atol=1e-5, rtol=1e-5)


def test_text_only_is_identity():
    spec = TinySpec(layers=2)
    assert_text_only_is_identity(tiny_llava(spec), spec, options("cdpruner", budget=2))


def test_explain_reports_the_oracle_selection_and_savings():
    spec = TinySpec(image_size=32, layers=2)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    (site,) = vtp_compile.explain(model, inputs, {"method": "cdpruner", "budget": 5}).sites
    assert (site.name, site.layer, site.visual_count, site.kept) == ("cdpruner", None, 16, 5)
    assert 0 < site.flops_saved < site.flops_total and site.kv_bytes_saved > 0
    _, kept = mask_oracle_logits(model, inputs, Pruning("cdpruner", budget=5))
    vis = [torch.nonzero(r).flatten().tolist() for r in inputs["input_ids"] == spec.image_token_id]
    assert [[v.index(p) for p in k] for k, v in zip(kept, vis)] == site.kept_visual_index.tolist()
