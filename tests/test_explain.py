import pytest
import torch

import vtp_compile
from vtp_compile.testing.oracle import OracleSpec, oracle_forward
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava


def test_explain_reports_the_oracle_selection():
    spec = TinySpec()
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1), tiles=2)
    with torch.no_grad():
        model(**inputs)
    for method, opts in (("fastv", {"layer": 2}), ("random", {}), ("divprune", {}),
                         ("acgr", {"tau": 0.0}), ("acgr", {"site": "encoder"})):
        ex = vtp_compile.explain(model, inputs, {"method": method, "budget": 5, **opts})
        (site,) = ex.sites
        assert (site.visual_count, site.kept) == (spec.visual_tokens, 5)
        assert 0 < site.flops_saved < site.flops_total and site.kv_bytes_saved > 0
        _, sel = oracle_forward(model, inputs["input_ids"], inputs["attention_mask"],
                                inputs["pixel_values"], spec=OracleSpec(method, budget=5, **opts))
        assert site.kept_visual_index.tolist() == sel
        assert "visual tokens 16 -> 5" in str(ex)


def test_explain_dstp_lists_active_and_reserve():
    spec = TinySpec()
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    with torch.no_grad():
        model(**inputs)
    (site,) = vtp_compile.explain(model, inputs, {"method": "dstp", "budget": 3, "layer": 1,
                                                          "reserve_by": "score"}).sites
    assert (site.kept, site.reserve) == (3, 3)
    _, sel = oracle_forward(model, inputs["input_ids"], inputs["attention_mask"],
                            inputs["pixel_values"], spec=OracleSpec("fastv", budget=6, layer=1))
    assert site.kept_visual_index.tolist() == sel     # the best 6 by FastV's score


def test_explain_text_only_says_why():
    spec = TinySpec()
    model = tiny_llava(spec)
    inputs = make_inputs(spec, text_only=True)
    with torch.no_grad():
        model(**inputs)
    ex = vtp_compile.explain(model, inputs, {"method": "fastv"})
    assert ex.sites == [] and ex.reason


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl", "qwen3_5"])
def test_explain_on_other_families_reports_the_mask_oracle_selection(family):
    """Families whose capture differs from LLaVA's: Gemma 3 builds masks with vmap (kept alive
    through the truncation), Qwen2.5-VL's forward splices in another graph (the side channel),
    Qwen3.5 mixes linear-attention layers."""
    from vtp_compile.testing import families as F, support
    from vtp_compile.testing.oracle_mask import Pruning, masked_forward

    model = F.build_model(family)
    rows = [F.RowSpec(3, 4, (F.ImageSpec(),)), F.RowSpec(5, 2, (F.ImageSpec(), F.ImageSpec()))]
    inputs = F.make_inputs(family, model, rows, padding_side="left", seed=2)
    visual = F.visual_positions(family, model, inputs)
    layer = support.layer_for(family)
    with torch.no_grad():
        model(**inputs)
        (site,) = vtp_compile.explain(model, inputs, {"method": "fastv", "budget": 3, "layer": layer}).sites
        _, kept = masked_forward(model, inputs, visual, Pruning("fastv", budget=3, layer=layer))
    want = [[int(visual[b, :p].sum()) for p in sorted(ks)] for b, ks in enumerate(kept)]
    assert site.kept == 3 and site.kept_visual_index.tolist() == want
