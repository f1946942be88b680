"""PDrop: options, stage schedule, and oracle equivalence (forward logits and greedy generate)
against the family-agnostic mask oracle, keep-all identity, explain per stage."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import vtp_compile
from vtp_compile.config import PruneConfig
from vtp_compile.methods import pdrop
from vtp_compile.methods.registry import get_method
from vtp_compile.sites import LayerSite
from vtp_compile.testing import oracle_baselines
from vtp_compile.testing.oracle_mask import Pruning
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import (assert_cache_holds, assert_keep_all_is_identity, assert_tokens_match,
                       check_forward_batches, compiled_generate, mask_oracle_generate,
                       mask_oracle_logits, options, record_case)
from ..strategies import NO_SHRINK, varied, keeps, prompt_batches, tiny_specs

SETTINGS = dict(phases=NO_SHRINK)


def test_defaults_follow_the_paper():
    cfg = PruneConfig.from_options({"method": "pdrop", "budget": 192})
    sites = get_method("pdrop").sites(cfg, 32)
    assert [s.layer for s in sites] == [8, 16, 24] and all(isinstance(s, LayerSite) for s in sites)
    assert all(s.own_attention for s in sites)
    # the official setting: lambda = 0.5 averages 270 of 576 tokens over 32 layers
    assert pdrop.stage_counts(576, [8, 16, 24], 32, budget=270) == [288, 144, 72]
    counts = pdrop.stage_counts(576, [8, 16, 24], 32, budget=192)
    avg = (8 * 576 + 8 * sum(counts)) / 32
    assert 190 <= avg <= 192 and counts == sorted(counts, reverse=True)
    assert pdrop.default_layers(4) == [1, 2, 3] and pdrop.default_layers(2) == [1]


def test_schedule_matches_the_oracle_arithmetic():
    for V in (1, 7, 16, 196, 576):
        for b in (1, 5, 12, 25, 49, 100, 600):
            for layers, L in (([8, 16, 24], 32), ([1, 2, 3], 4), ([0, 2], 4)):
                want = [oracle_baselines.pdrop_count(V, s, layers, L, budget=b) for s in (1, 2, 3)[:len(layers)]]
                assert pdrop.stage_counts(V, layers, L, budget=b) == want


@pytest.mark.parametrize("bad", [{"layers": [3, 1]}, {"layers": [1, 1]}, {"layers": "8,16"},
                                 {"layers": [-1]}, {"lam": 0.5}])
def test_bad_options_are_errors(bad):
    with pytest.raises(ValueError, match="layers|valid options"):
        PruneConfig.from_options({"method": "pdrop", "budget": 16, **bad})


def test_layers_beyond_the_model_are_an_error():
    cfg = PruneConfig.from_options({"method": "pdrop", "budget": 4, "layers": [1, 3]})
    with pytest.raises(ValueError, match="out of range"):
        get_method("pdrop").sites(cfg, 3)


@st.composite
def cases(draw):
    spec = draw(tiny_specs(layers=(2, 4)))
    L = spec.layers
    layers = draw(st.sampled_from([None, [0], [1], [0, L - 1], list(range(L))]))
    batches = [draw(prompt_batches()) for _ in range(2)]
    return spec, batches, draw(keeps(spec.visual_tokens)), layers


@settings(max_examples=2, **SETTINGS)
@given(varied(cases()))
def test_forward_equals_mask_oracle(case):
    """One compiled model, two prompt batches (a static, then a dynamic graph)."""
    spec, batches, keep, layers = case
    model = tiny_llava(spec)
    extra = {} if layers is None else {"layers": layers}
    pruning = Pruning("pdrop", layers=None if layers is None else tuple(layers), **keep)
    check_forward_batches(spec, batches, options("pdrop", **keep, **extra), pruning, model=model)


@settings(max_examples=2, **SETTINGS)
@given(varied(cases()))
def test_generate_equals_mask_oracle(case):
    spec, batches, keep, layers = case
    model = tiny_llava(spec)
    inputs = make_inputs(spec, **dict(batches[0], side="left"))
    extra = {} if layers is None else {"layers": layers}
    want, margins, kept = mask_oracle_generate(
        model, inputs, Pruning("pdrop", layers=None if layers is None else tuple(layers), **keep))
    out = compiled_generate(model, inputs, options("pdrop", **keep, **extra))
    assert_tokens_match(out.sequences[:, inputs["input_ids"].shape[1]:], want, margins)
    removed = [int(r.sum()) - len(k) for r, k in zip(inputs["input_ids"] == spec.image_token_id, kept)]
    assert_cache_holds(out.past_key_values, inputs, removed, 3)
    record_case("generate/eager")


def test_keep_all_is_identity():
    spec = TinySpec(layers=4)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    assert_keep_all_is_identity(model, inputs, "pdrop", spec.visual_tokens)


def test_explain_and_reports_list_every_stage():
    spec = TinySpec(layers=4)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1), tiles=2)
    with torch.no_grad():
        model(**inputs)
    ex = vtp_compile.explain(model, inputs, {"method": "pdrop", "budget": 8})
    counts = pdrop.stage_counts(16, [1, 2, 3], 4, budget=8)
    assert [(s.name, s.layer, s.kept) for s in ex.sites] == [
        ("pdrop-1", 1, counts[0]), ("pdrop-2", 2, counts[1]), ("pdrop-3", 3, counts[2])]
    assert [s.visual_count for s in ex.sites] == [16] + counts[:-1]
    assert all(s.flops_saved >= 0 for s in ex.sites) and ex.sites[0].kv_bytes_saved > 0
    _, kept = mask_oracle_logits(model, inputs, Pruning("pdrop", budget=8))
    vis = [torch.nonzero(r).flatten().tolist() for r in inputs["input_ids"] == spec.image_token_id]
    assert [[v.index(p) for p in k] for k, v in zip(kept, vis)] == ex.sites[-1].kept_visual_index.tolist()
    # stage 1's report: FLOPs saved from layer 1 on; all three add up below the total
    assert sum(s.flops_saved for s in ex.sites) < ex.sites[0].flops_total
