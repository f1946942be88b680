"""Chains: an encoder-site method then layer-site methods, each with its own budget; options,
oracle equivalence (forward, generate) against the mask oracle's stages, explain per stage."""
import logging

import pytest
import torch

import vtp_compile
from vtp_compile.config import PruneConfig
from vtp_compile.methods.registry import get_method
from vtp_compile.sites import EncoderSite, LayerSite
from vtp_compile.testing.oracle_mask import Pruning
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import check_generate, mask_oracle_logits


def _chain(*stages):
    return {"method": "chain", "stages": list(stages)}


def test_alone_it_is_divprune_then_fastv_to_a_ninth():
    enc, lay = get_method("chain").sites(PruneConfig.from_options({"method": "chain"}), 32)
    assert (enc.name, lay.name, enc.keep.count(576), lay.keep.count(192)) == ("divprune", "fastv", 192, 64)


def test_stages_become_sites_in_order():
    cfg = PruneConfig.from_options(_chain({"method": "divprune", "budget": 128},
                                          {"method": "fastv", "budget": 32, "layer": 3}))
    enc, lay = get_method("chain").sites(cfg, 32)
    assert isinstance(enc, EncoderSite) and enc.keep.budget == 128
    assert isinstance(lay, LayerSite) and (lay.layer, lay.keep.budget) == (3, 32)


@pytest.mark.parametrize("opts, match", [
    (_chain({"method": "fastv"}), "at least two"),
    ({"method": "chain", "stages": []}, "at least two"),
    (_chain({"method": "fastv"}, {"method": "divprune"}), "order the stages by depth"),
    (_chain({"method": "fastv", "layer": 2}, {"method": "dart", "layer": 2}), "order the stages by depth"),
    (_chain({"method": "divprune"}, {"method": "alvts"}), "cannot be chained"),
    (_chain({"method": "divprune"}, {"method": "dstp"}), "cannot be chained"),
    (_chain({"method": "divprune", "budget": 0}, {"method": "fastv"}), "stage 1: 'budget'"),
    (_chain({"method": "divprune", "inner_backend": "eager"}, {"method": "fastv"}), "may not set"),
    ({**_chain({"method": "divprune"}, {"method": "fastv"}), "budget": 8}, "no 'budget'"),
])
def test_bad_chains_are_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        cfg = PruneConfig.from_options(opts)
        get_method("chain").sites(cfg, 4)


def test_generate_equals_the_mask_oracle():
    """Greedy tokens and caches (the forward selection is checked by the explain test below)."""
    spec = TinySpec(layers=3, seed=2)
    stages = ({"method": "divprune", "budget": 9}, {"method": "fastv", "budget": 3, "layer": 2})
    pruning = Pruning("chain", chain=(Pruning("divprune", budget=9), Pruning("fastv", budget=3, layer=2)))
    check_generate(spec, dict(rows=[(1, 4, 1), (3, 2, 2), (2, 2, 0)], pad=(0, 2, 1), seed=3, tiles=2),
                   {**_chain(*stages), "inner_backend": "eager"}, pruning)


def test_explain_and_info_lines_show_every_stage(caplog):
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    opts = _chain({"method": "random", "ratio": 0.5}, {"method": "pdrop", "budget": 4, "layers": [1, 2]})
    with torch.no_grad():
        model(**inputs)
    with caplog.at_level(logging.INFO, logger="vtp_compile"):
        ex = vtp_compile.explain(model, inputs, opts)
    assert [(s.name, s.layer) for s in ex.sites] == [("random", None), ("pdrop-1", 1), ("pdrop-2", 2)]
    assert [s.visual_count for s in ex.sites][:2] == [16, 8]
    lines = [r.getMessage() for r in caplog.records]
    for name in ("random", "pdrop-1", "pdrop-2"):
        assert any(name in line for line in lines), lines
    _, kept = mask_oracle_logits(model, inputs, Pruning("chain", chain=(
        Pruning("random", ratio=0.5), Pruning("pdrop", budget=4, layers=(1, 2)))))
    vis = [torch.nonzero(r).flatten().tolist() for r in inputs["input_ids"] == spec.image_token_id]
    assert [[v.index(p) for p in k] for k, v in zip(kept, vis)] == ex.sites[-1].kept_visual_index.tolist()
