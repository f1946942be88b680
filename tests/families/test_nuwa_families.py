"""Nüwa beyond LLaVA's CLIP towers: PaliGemma's SigLIP tower (no CLS token: anchors by the
attention each patch receives) and Qwen2-VL's / Qwen2.5-VL's towers (no CLS, merged patches,
windows) against the mask oracle, on the paths support.EXTRA claims; LLaVA-NeXT's and
LLaVA-OneVision's anyres packing (newline tokens, padded patches dropped) is left unpruned, and
so is Nüwa on a Qwen batch with images of different sizes (VisionZip, which reads no grid,
prunes it)."""
import pytest
import torch

import vtp_compile
from tests.helpers import REPORTS
from vtp_compile.testing import families as F
from vtp_compile.testing import oracle_nuwa, support
from vtp_compile.testing.oracle_mask import Pruning, masked_forward
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import check_against_mask_oracle, kept_positions, record_case

# PaliGemma's processor puts the image first; Nüwa needs the same image count in every row.
# Qwen: 64x96 pixels -> an 8x12 patch grid, 4x6 merged tokens (6 windows of 2x2 in Qwen2.5-VL);
# fixed-size towers ignore the size
ROWS = [F.RowSpec(0, 4, (F.ImageSpec(64, 96),)), F.RowSpec(0, 2, (F.ImageSpec(64, 96),))]
# VisionZip's score on a tower without CLS: both variants on PaliGemma, "received" on Qwen2.5-VL
# (its "cls" is the head sum: the same ranking, the same record)
VZ_SCORES = {"paligemma": ("cls", "received"), "qwen2_5_vl": ("received",)}
# Qwen: two images of different sizes (4x6 and 2x6 merged tokens) in a left-padded batch
MIXED = [F.RowSpec(0, 4, (F.ImageSpec(64, 96),)), F.RowSpec(0, 2, (F.ImageSpec(32, 96),))]


def check_qwen_record(model, inputs):
    """Qwen towers: the internals attach recorded under generate equal the oracle's, per merged
    token in the language model's order (a misplaced window or merge group shows here even when
    the greedy tokens do not move)."""
    if "image_grid_thw" not in inputs:
        return
    rec = vtp_compile.vision_context.last_record()
    summed, received, upper, keys, grid = oracle_nuwa.qwen_internals(
        model, inputs["pixel_values"], inputs["image_grid_thw"])
    assert not rec.refused and bool(rec.no_grid) == (grid is None)
    assert rec.grid == (grid if grid is not None else (1, rec.features.shape[0]))
    for got, want in ((rec.cls_attn, summed), (rec.received, received), (rec.upper, upper),
                      (rec.keys, keys)):
        torch.testing.assert_close(got.reshape(want.shape), want, atol=1e-5, rtol=1e-4)


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
    check_qwen_record(model, inputs)
    assert any(r.phase == "prefill" and [s.name for s in r.sites] == ["nuwa-anchors", "nuwa"]
               for r in REPORTS[start:])


@pytest.mark.parametrize("family,path,score", [(f, p, s) for f, paths in support.EXTRA["visionzip"].items()
                                               for p in paths for s in VZ_SCORES[f]])
def test_visionzip_on_families(family, path, score):
    """VisionZip reads the same record: on a CLS-free tower "cls" is the received attention. It
    reads no grid, so Qwen images of different sizes are pruned (per-token internals)."""
    torch._dynamo.reset()
    model = vtp_compile.attach(F.build_model(family))
    rows = MIXED if "qwen" in family else ROWS
    inputs = F.make_inputs(family, model, rows, padding_side="left", seed=2)
    visual = F.visual_positions(family, model, inputs)
    opts = {"method": "visionzip", "inner_backend": "eager", "budget": 6, "score": score}
    pruning = Pruning("visionzip", budget=6, score=score)
    start = len(REPORTS)
    check_against_mask_oracle(model, inputs, visual, path, opts, pruning)
    record_case(f"family/{path}")
    check_qwen_record(model, inputs)
    assert any(r.phase == "prefill" and r.sites for r in REPORTS[start:]), "nothing was pruned"


def test_nuwa_on_qwen_images_of_different_sizes_is_left_unpruned_and_says_why():
    """Two images of different sizes in a left-padded batch (4x6 and 2x6 merged tokens): Nüwa's
    anchor kernels take one patch grid per call, so generate runs unpruned and the report says
    why."""
    torch._dynamo.reset()
    model = vtp_compile.attach(F.build_model("qwen2_5_vl"))
    inputs = F.make_inputs("qwen2_5_vl", model, MIXED, padding_side="left", seed=3)
    start = len(REPORTS)
    with torch.no_grad():
        want = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        model.compile(backend="vtp", options={"method": "nuwa", "budget": 3, "layer": 1,
                                              "inner_backend": "eager"})
        got = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert torch.equal(got, want)
    assert any("images of different sizes" in (r.skipped or "") for r in REPORTS[start:])
    assert not any(r.sites for r in REPORTS[start:])


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
        model.compile(backend="vtp", options={"method": "nuwa", "budget": 3, "layer": 1,
                                             "inner_backend": "eager"})
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
