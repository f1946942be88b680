"""Nüwa beyond LLaVA's CLIP towers: PaliGemma's SigLIP tower (no CLS token: anchors by the
attention each patch receives) against the mask oracle, on the paths support.EXTRA claims;
LLaVA-NeXT's and LLaVA-OneVision's anyres packing (newline tokens, padded patches dropped) is
left unpruned."""
import pytest
import torch

import vtp_compile
from vtp_compile.passes.manager import REPORTS
from vtp_compile.testing import families as F
from vtp_compile.testing import oracle_nuwa, support
from vtp_compile.testing.oracle_mask import Pruning, masked_forward
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import check_against_mask_oracle, kept_positions, record_case

# PaliGemma's processor puts the image first; Nüwa needs the same image count in every row
ROWS = [F.RowSpec(0, 4, (F.ImageSpec(),)), F.RowSpec(0, 2, (F.ImageSpec(),))]


def test_the_mask_oracle_is_the_nuwa_oracle_on_llava():
    """The mask oracle's Nüwa (anchors, aggregation, FastV) equals oracle_nuwa's on LLaVA."""
    spec = TinySpec(image_size=48, layers=3, seed=2)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2), seed=3)
    visual = inputs["input_ids"] == spec.image_token_id
    got, kept = masked_forward(model, inputs, visual, Pruning("nuwa", budget=5, layer=1, pillars=0.3))
    want, _ = oracle_nuwa.nuwa_forward(model, inputs["input_ids"], inputs["attention_mask"],
                                       inputs["pixel_values"], 5, layer=1, pillars=0.3)
    keep = kept_positions(inputs, visual, kept)
    torch.testing.assert_close(got[keep], want[keep], atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("family,path", [(f, p) for f, paths in support.EXTRA["nuwa"].items() for p in paths])
def test_nuwa_on_families(family, path):
    torch._dynamo.reset()
    model = vtp_compile.attach(F.build_model(family))
    inputs = F.make_inputs(family, model, ROWS, padding_side="left", seed=1)
    visual = F.visual_positions(family, model, inputs)
    layer = support.layer_for(family)
    opts = {"method": "nuwa", "inner_backend": "eager", "budget": 3, "layer": layer}
    pruning = Pruning("nuwa", budget=3, layer=layer)
    start = len(REPORTS)
    check_against_mask_oracle(model, inputs, visual, path, opts, pruning)
    record_case(f"family/{path}")
    assert any(r.phase == "prefill" and [s.name for s in r.sites] == ["nuwa-anchors", "nuwa"]
               for r in REPORTS[start:])


@pytest.mark.parametrize("family,path", [(f, p) for f, paths in support.EXTRA["visionzip"].items()
                                         for p in paths])
@pytest.mark.parametrize("score", ["cls", "received"])
def test_visionzip_on_families(family, path, score):
    """VisionZip reads the same record: on a CLS-free tower "cls" is the received attention."""
    torch._dynamo.reset()
    model = vtp_compile.attach(F.build_model(family))
    inputs = F.make_inputs(family, model, ROWS, padding_side="left", seed=2)
    visual = F.visual_positions(family, model, inputs)
    opts = {"method": "visionzip", "inner_backend": "eager", "budget": 6, "score": score}
    pruning = Pruning("visionzip", budget=6, score=score)
    start = len(REPORTS)
    check_against_mask_oracle(model, inputs, visual, path, opts, pruning)
    record_case(f"family/{path}")
    assert any(r.phase == "prefill" and r.sites for r in REPORTS[start:]), "nothing was pruned"


@pytest.mark.parametrize("family", support.REFUSED["nuwa"])
def test_packed_families_are_left_unpruned_and_say_why(family):
    """LLaVA-NeXT (CLIP) and LLaVA-OneVision (SigLIP, strategy "full") pack anyres crops with
    newline tokens: no feature per vision patch, so per-patch anchors cannot be placed; generate runs unpruned, with the
    reason in the report (never a misplaced score)."""
    torch._dynamo.reset()
    model = vtp_compile.attach(F.build_model(family))
    inputs = F.make_inputs(family, model, [F.RowSpec(3, 4, (F.ImageSpec(),))] * 2, padding_side="left")
    start = len(REPORTS)
    with torch.no_grad():
        want = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        model.compile(backend="vtp", options={"method": "nuwa", "budget": 3, "layer": 1})
        got = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert torch.equal(got, want)
    assert any("per-patch vision internals" in (r.skipped or "") for r in REPORTS[start:])
    assert not any(r.sites for r in REPORTS[start:])


def test_clsfree_towers_with_the_default_strategy_are_refused():
    """"default" drops each image's first token: on a tower without CLS that is a patch."""
    model = F.build_model("llava_onevision")
    model.config.vision_feature_select_strategy = "default"
    with pytest.raises(ValueError, match="no CLS token"):
        vtp_compile.attach(model)
