"""Training-only targets of the scene model: the selection head and the colour target."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from vtp_compile.scenes.generator import KINDS
from vtp_compile.scenes.model import PATCH_SIZE, SceneModelSize, build_processor
from vtp_compile.scenes.tasks import make_dataset
from vtp_compile.scenes.targets import (AUX_PRESETS, SelectionHead, patch_shape_index,
                                        patch_targets, selected_shapes, selection_masks)
from vtp_compile.scenes.train import TaskMixer, encode_batch, qas_of, train

TINY = SceneModelSize(vision_hidden=32, vision_layers=2, vision_heads=2, vision_mlp=64,
                      text_hidden=32, text_layers=2, text_heads=2, text_kv_heads=1, text_mlp=64)
N_VISUAL = (112 // PATCH_SIZE) ** 2


def _named(scene, question):
    return [(scene.shapes[i].colour, scene.shapes[i].kind)
            for i in selected_shapes(scene, question)]


@pytest.mark.parametrize("task", ["attribute", "counting", "grounding", "relations"])
def test_selected_shapes_are_the_ones_the_question_names(task):
    for ex in make_dataset(task, 30):
        words = ex.question.split()
        named = _named(ex.scene, ex.question)
        if task == "counting":  # every shape of the asked colour or kind, as many as the answer
            assert len(named) == int(ex.answer)
            word = words[2]
            assert all(c == word or k + "s" == word for c, k in named)
        elif task == "attribute":  # the unique shape, whose other attribute is the answer
            assert len(named) == 1 and ex.answer in named[0]
        elif task == "grounding":
            assert named == [(words[3], words[4])]
            row, col = ex.scene.shapes[selected_shapes(ex.scene, ex.question)[0]].cell
            assert ex.answer == f"row {row} col {col}"
        else:  # relations: the anchor
            assert named == [(words[-3], words[-2])]


def test_ordered_questions_select_nothing():
    ex = make_dataset("ordered", 1)[0]
    assert selected_shapes(ex.scene, ex.question) == []


def test_selection_masks_follow_span_order_and_cover_the_named_patches():
    items = TaskMixer(0).batch(6)
    _, _, _, spans = encode_batch(items, build_processor().tokenizer, N_VISUAL)
    masks = selection_masks([(it.scene, [q for _, q, _ in qas_of(it)]) for it in items])
    assert len(masks) == len(spans)
    k = 0
    for item in items:
        idx = patch_shape_index(item.scene)
        for _, question, _ in item.qas:
            chosen = selected_shapes(item.scene, question)
            expect = np.isin(idx, [i + 1 for i in chosen])
            if expect.any():
                assert np.array_equal(masks[k], expect)
            else:
                assert masks[k] is None
            k += 1
    assert any(m is not None for m in masks) and any(m is None for m in masks)


def test_selection_head_loss_rewards_mass_on_the_target():
    torch.manual_seed(0)
    head = SelectionHead(hidden=8, dim=4)
    hidden = torch.randn(1, 1 + N_VISUAL + 3, 8)
    mask = np.zeros(N_VISUAL, dtype=bool)
    mask[:5] = True
    spans = [(0, "counting", 1 + N_VISUAL + 2, 1 + N_VISUAL + 3)]
    assert head.loss(hidden, spans, [None], N_VISUAL) is None
    before = head.loss(hidden, spans, [mask], N_VISUAL)
    # uniform scores give -log(5/196); the loss is the target's -log softmax mass
    with torch.no_grad():
        head.q.weight.zero_()
        head.q.bias.zero_()
    assert head.loss(hidden, spans, [mask], N_VISUAL).item() == pytest.approx(
        np.log(N_VISUAL / 5), rel=1e-5)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(100):
        loss = head.loss(hidden, spans, [mask], N_VISUAL)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * min(before.item(), np.log(N_VISUAL / 5))


def test_colour_target_and_presets():
    items = TaskMixer(0).batch(4)
    t = patch_targets(items, ("class", "kind", "colour"))
    fg = t["class"] > 0
    assert torch.equal(fg, t["colour"] >= 0)
    # class = 1 + colour * n_kinds + kind
    assert torch.equal(t["class"][fg], 1 + t["colour"][fg] * len(KINDS) + t["kind"][fg])
    assert "colour" not in AUX_PRESETS["scene"] and "colour" in AUX_PRESETS["scene+colour"]
    assert all(p[0] == "class" for p in AUX_PRESETS.values())


def test_train_with_selection_head_and_colour_target(tmp_path):
    train(steps=2, out=tmp_path, batch_size=4, size=TINY, warmup=1, threads=1,
          vision_warmup_min=0, select_weight=0.5, aux_targets="scene+colour")
    meta = json.loads((tmp_path / "training_meta.json").read_text())
    assert meta["select_weight"] == 0.5 and meta["select_layer"] == 1
    assert "colour" in meta["aux_targets"]
    assert all("select" in h for h in meta["history"])
    # the head is training-only: the checkpoint holds only LLaVA's own weights
    keys = safe_open(tmp_path / "model.safetensors", "pt").keys()
    assert keys and all(k.startswith(("language_model.", "vision_tower.", "multi_modal_projector.",
                                      "model.", "lm_head.")) for k in keys)


def test_train_rejects_bad_selection_layer_and_preset(tmp_path):
    with pytest.raises(ValueError, match="select_layer"):
        train(steps=1, out=tmp_path, size=TINY, select_weight=1.0, select_layer=9)
    with pytest.raises(ValueError, match="scene\\+colour"):
        train(steps=1, out=tmp_path, size=TINY, aux_targets="colours")
