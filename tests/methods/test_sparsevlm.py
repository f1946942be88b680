"""SparseVLM: options, stage layers, oracle equivalence (forward logits and greedy generate)
against the mask oracle's independent eager implementation, keep-all and text-only identity,
explain per stage, Inductor end to end."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import vtp_compile
from vtp_compile.config import PruneConfig
from vtp_compile.methods import sparsevlm
from vtp_compile.methods.registry import get_method
from vtp_compile.testing import oracle_baselines
from vtp_compile.testing.oracle_mask import Pruning
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import (assert_keep_all_is_identity, assert_text_only_is_identity,
                       check_forward_batches, check_generate, mask_oracle_logits, options)
from ..strategies import NO_SHRINK, varied, keeps, prompt_batches, tiny_specs

SETTINGS = dict(phases=NO_SHRINK)


def test_defaults_follow_the_paper():
    cfg = PruneConfig.from_options({"method": "sparsevlm", "budget": 64})
    sites = get_method("sparsevlm").sites(cfg, 32)
    assert [s.layer for s in sites] == [3, 7, 16]        # scored at 2, 6, 15; pruned after
    assert [s.keep.count(576) for s in sites] == [66, 30, 17]
    for L in (2, 3, 4, 8, 32, 40):
        assert sparsevlm.default_layers(L) == oracle_baselines.sparsevlm_layers(L)
    assert PruneConfig.from_options({"method": "sparsevlm"}).keep.ratio is not None
    # v1 recycling: 576 -> 66 kept + clusters of the top 30 % of the 510 pruned (154 -> 16)
    assert sparsevlm.stage_counts(576, 3, budget=64, recycle=True)[0] == 66 + 16


@pytest.mark.parametrize("bad", [{"layers": [3, 1]}, {"layers": [1, 2, 3, 4]}, {"layers": "2"},
                                 {"layers": [-1]}, {"recycle": 1}, {"recycle_ratio": 0.3}])
def test_bad_options_are_errors(bad):
    with pytest.raises(ValueError, match="layers|recycle|valid options"):
        PruneConfig.from_options({"method": "sparsevlm", "budget": 16, **bad})


def test_layers_beyond_the_model_are_an_error():
    cfg = PruneConfig.from_options({"method": "sparsevlm", "budget": 4, "layers": [0, 2]})
    with pytest.raises(ValueError, match="out of range"):
        get_method("sparsevlm").sites(cfg, 3)


@st.composite
def cases(draw):
    spec = draw(tiny_specs(layers=(2, 4)))
    L = spec.layers
    layers = draw(st.sampled_from([None, [0], [L - 2], [0, L - 2] if L > 2 else [0]]))
    return (spec, [draw(prompt_batches()) for _ in range(2)], draw(keeps(spec.visual_tokens)),
            (layers, draw(st.booleans())))


def _params(params):
    layers, recycle = params
    c = {"recycle": recycle} if recycle else {}
    o = {"recycle": recycle}
    if layers is not None:
        c["layers"], o["layers"] = layers, tuple(layers)
    return c, o


@settings(max_examples=2, **SETTINGS)
@given(varied(cases()))
def test_forward_equals_mask_oracle(case):
    spec, batches, keep, layers = case
    c, o = _params(layers)
    check_forward_batches(spec, batches, options("sparsevlm", **keep, **c), Pruning("sparsevlm", **keep, **o))


@settings(max_examples=1, **SETTINGS)
@given(varied(cases()))
def test_generate_equals_mask_oracle(case):
    """Left padding, batch up to 3, rows with different image counts; caches hold the kept set."""
    spec, batches, keep, layers = case
    c, o = _params(layers)
    check_generate(spec, batches[0], options("sparsevlm", **keep, **c), Pruning("sparsevlm", **keep, **o))


def test_keep_all_and_text_only_are_identity():
    spec = TinySpec(layers=4)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    assert_keep_all_is_identity(model, inputs, "sparsevlm", spec.visual_tokens)
    assert_text_only_is_identity(model, spec, options("sparsevlm", budget=2))


def test_explain_and_reports_list_every_stage():
    spec = TinySpec(layers=4)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1), tiles=2)
    with torch.no_grad():
        model(**inputs)
    ex = vtp_compile.explain(model, inputs, {"method": "sparsevlm", "budget": 4})
    counts = sparsevlm.stage_counts(16, 3, budget=4)
    assert [(s.name, s.layer, s.kept) for s in ex.sites] == [
        ("sparsevlm-1", 1, counts[0]), ("sparsevlm-2", 2, counts[1]), ("sparsevlm-3", 3, counts[2])]
    assert [s.visual_count for s in ex.sites] == [16] + counts[:-1]
    assert all(s.flops_saved >= 0 for s in ex.sites) and ex.sites[0].kv_bytes_saved > 0
    assert sum(s.flops_saved for s in ex.sites) < ex.sites[0].flops_total
    _, kept = mask_oracle_logits(model, inputs, Pruning("sparsevlm", budget=4))
    vis = [torch.nonzero(r).flatten().tolist() for r in inputs["input_ids"] == spec.image_token_id]
    assert [[v.index(p) for p in k] for k, v in zip(kept, vis)] == ex.sites[-1].kept_visual_index.tolist()
