"""Tokenizer, processor and model: round trips, save/load offline, the shipped checkpoint."""
import json

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from vtp_compile.scenes import SCENE_MODEL_PATH, load_scene_model, make_dataset
from vtp_compile.scenes.generator import COLOURS
from vtp_compile.scenes.model import (PATCH_SIZE, SceneModelSize, build_model, build_processor,
                                      build_tokenizer, size_dict)
from vtp_compile.scenes.tasks import vocabulary
from vtp_compile.scenes.targets import MAX_SHAPES
from vtp_compile.scenes.train import (CURRICULUM_START, TaskMixer, curriculum_cap,
                                      encode_batch, init_sincos_positions, paraphrase,
                                      parse_task_weights, pixel_tensor, train)

TINY = SceneModelSize(vision_hidden=32, vision_layers=2, vision_heads=2, vision_mlp=64,
                      text_hidden=32, text_layers=2, text_heads=2, text_kv_heads=1, text_mlp=64)
N_VISUAL = (112 // PATCH_SIZE) ** 2


def test_tokenizer_round_trip():
    tok = build_tokenizer()
    text = "what colour is the triangle ? row 2 col 3 red blue ."
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) == len(text.split()) + 1  # one id per word + <s>
    for word in vocabulary():
        assert tok.decode(tok(word, add_special_tokens=False).input_ids) == word


def test_tokenizer_specials_and_padding():
    tok = build_tokenizer()
    assert tok.padding_side == "left"
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    image_id = tok.convert_tokens_to_ids("<image>")
    assert tok("<image><image> how", add_special_tokens=False).input_ids == [image_id] * 2 + [
        tok.convert_tokens_to_ids("how")]
    batch = tok(["how many", "how many red shapes ?"], padding=True)
    assert batch.input_ids[0][0] == tok.pad_token_id and batch.attention_mask[0][0] == 0


def test_processor_expands_image_tokens_and_matches_training_pixels():
    proc = build_processor()
    exs = make_dataset("attribute", 2, seed=0)
    inputs = proc(images=[e.image for e in exs], text=["<image> " + e.question for e in exs],
                  return_tensors="pt", padding=True)
    image_id = proc.tokenizer.convert_tokens_to_ids("<image>")
    assert ((inputs.input_ids == image_id).sum(1) == N_VISUAL).all()
    assert inputs.pixel_values.shape == (2, 3, 112, 112)
    assert torch.allclose(pixel_tensor([e.image for e in exs]), inputs.pixel_values, atol=1e-5)
    ids, mask, labels, spans = encode_batch(exs, proc.tokenizer, N_VISUAL)
    assert ((ids == image_id).sum(1) == N_VISUAL).all()
    assert (labels[ids == image_id] == -100).all()
    assert (labels != -100).sum(1).tolist() == [len(e.answer.split()) + 1 for e in exs]
    # the single-question sequence is exactly what the processor builds for inference
    for i, e in enumerate(exs):
        prompt = proc(images=[e.image], text=["<image> " + e.question],
                      return_tensors="pt").input_ids[0]
        assert ids[i, :len(prompt)].tolist() == prompt.tolist()
        assert spans[i] == (i, "attribute", len(prompt), len(prompt) + 2)


def test_packed_training_sequences():
    tok = build_tokenizer()
    items = TaskMixer(seed=0).batch(6)
    assert all(1 <= len(it.qas) <= 6 for it in items)
    assert len({t for it in items for t, _, _ in it.qas}) >= 3
    ids, mask, labels, spans = encode_batch(items, tok, N_VISUAL)
    assert len(spans) == sum(len(it.qas) for it in items)
    for row, task, lo, hi in spans:
        answer = tok.decode(ids[row, lo:hi - 1])
        assert ids[row, hi - 1] == tok.eos_token_id
        assert (labels[row, lo:hi] == ids[row, lo:hi]).all()
        assert answer in {a for t, _, a in items[row].qas if t == task}


def test_tiny_model_save_load_offline(tmp_path):
    proc = build_processor()
    model = build_model(proc.tokenizer, TINY)
    assert model.config.vision_feature_layer == TINY.vision_feature_layer
    assert model.config.vision_feature_select_strategy == "default"
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path, local_files_only=True)
    proc2 = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.config._attn_implementation == "sdpa"
    assert proc2.tokenizer.padding_side == "left"
    assert type(proc2.image_processor).__name__ == "CLIPImageProcessorPil"
    exs = make_dataset("counting", 2, seed=0)
    inputs = proc2(images=[e.image for e in exs], text=["<image> " + e.question for e in exs],
                   return_tensors="pt", padding=True)
    with torch.no_grad():
        a = model(**inputs).logits
        b = loaded(**inputs).logits
    assert torch.allclose(a, b, atol=1e-5)
    out = loaded.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= inputs.input_ids.shape[1] + 3


def test_feature_layer_option():
    tok = build_tokenizer()
    default = SceneModelSize()
    # the scene model keeps CLS and >= 3 vision layers (Nüwa reads CLS attention at layer -2)
    assert default.vision_layers >= 3 and default.vision_feature_layer in (-1, -2)
    assert build_model(tok, TINY).config.vision_feature_layer == default.vision_feature_layer
    small = SceneModelSize(**{**size_dict(TINY), "vision_feature_layer": -2})
    assert build_model(tok, small).config.vision_feature_layer == -2


def test_train_vision_warmup_smoke(tmp_path):
    train(steps=2, out=tmp_path, batch_size=4, size=TINY, warmup=1, threads=1,
          vision_warmup_min=5, vision_warmup_steps=3, vision_batch_size=2, log_every=1)
    meta = json.loads((tmp_path / "training_meta.json").read_text())
    assert meta["steps_done"] == 2
    warm = meta["vision_warmup"]
    assert warm["steps_done"] == 3 and warm["batch_size"] == 2 and len(warm["history"]) == 3
    assert {"class", "cell_row", "fg_acc"} <= set(warm["history"][-1])


def test_parse_task_weights():
    assert parse_task_weights("") is None
    assert parse_task_weights("grounding=2, counting=1.5") == {"grounding": 2.0,
                                                                "counting": 1.5}
    with pytest.raises(ValueError, match="bad task weight"):
        parse_task_weights("colour=2")


def test_train_smoke(tmp_path):
    train(steps=2, out=tmp_path, batch_size=4, size=TINY, warmup=1, threads=1,
          vision_warmup_min=0, task_loss_weights={"grounding": 2.0})
    meta = json.loads((tmp_path / "training_meta.json").read_text())
    assert meta["steps_done"] == 2
    assert meta["vision_warmup"] is None and meta["task_loss_weights"] == {"grounding": 2.0}
    model, proc = load_scene_model(tmp_path)
    assert model.config.text_config.hidden_size == TINY.text_hidden


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_train_qa_vision_lr_scale(tmp_path, scale):
    # without a warm-up the tower starts from build_model(seed) + the sin-cos table, so a frozen
    # tower (scale 0) is saved unchanged and a scaled one moves; the projector always trains
    train(steps=2, out=tmp_path, batch_size=4, size=TINY, warmup=1, threads=1,
          vision_warmup_min=0, qa_vision_lr_scale=scale, curriculum=0.5)
    assert json.loads((tmp_path / "training_meta.json").read_text())["qa_vision_lr_scale"] == scale
    start = build_model(build_tokenizer(), TINY, seed=0)
    init_sincos_positions(start)
    trained, _ = load_scene_model(tmp_path)
    tower = [torch.equal(a, b) for a, b in zip(start.model.vision_tower.state_dict().values(),
                                               trained.model.vision_tower.state_dict().values())]
    assert all(tower) == (scale == 0)
    assert all(p.requires_grad for p in trained.parameters())
    proj = zip(start.model.multi_modal_projector.parameters(),
               trained.model.multi_modal_projector.parameters())
    assert not all(torch.equal(a, b) for a, b in proj)


def test_curriculum_cap_and_mixer():
    assert curriculum_cap(0.0, 0.0) is None and curriculum_cap(0.9, 0.5) is None
    caps = [curriculum_cap(p / 100, 0.5) for p in range(50)]
    assert caps[0] == CURRICULUM_START and caps == sorted(caps) and caps[-1] < MAX_SHAPES
    mixer = TaskMixer(0)
    mixer.max_shapes = 2
    assert {len(p.scene.shapes) for p in mixer.batch(40)} <= {1, 2}
    mixer.max_shapes = None  # full range again (counting scenes have up to 8 shapes)
    assert max(len(p.scene.shapes) for p in mixer.batch(80)) > 4


def test_paraphrase_moves_the_colour_before_the_question_mark():
    assert paraphrase("how many red shapes ?") == "how many shapes red ?"
    assert paraphrase("what shape is the blue one ?") == "what shape is blue ?"
    for q in ("how many circles ?", "what colour is the square ?", "where is the red square ?",
              "list the colours from left to right ."):
        assert paraphrase(q) is None
    tok = build_tokenizer()
    mixer = TaskMixer(0, tries=3, paraphrase_p=1.0)
    qas = [qa for p in mixer.batch(40) for qa in p.qas]
    moved = [q for _, q, _ in qas if q.startswith("how many shapes ") or q == "what shape is "
             + q.split()[-2] + " ?"]
    assert moved and all(q.split()[-2] in COLOURS for q in moved)
    # no colour question keeps the original wording at p=1, and every word is in the vocabulary
    assert not any(paraphrase(q) for _, q, _ in qas)
    assert all(tok.unk_token_id not in tok(q).input_ids for _, q, _ in qas)
    for item in mixer.batch(40):  # the answers still describe the scene
        for _, q, a in item.qas:
            colour = q.split()[-2]
            same = [s for s in item.scene.shapes if s.colour == colour]
            if q.startswith("how many shapes "):
                assert a == str(len(same))
            elif q == f"what shape is {colour} ?":
                assert len(same) == 1 and a == same[0].kind


def test_train_rejects_negative_vision_scale(tmp_path):
    with pytest.raises(ValueError, match="qa_vision_lr_scale"):
        train(steps=1, out=tmp_path, size=TINY, qa_vision_lr_scale=-1)


@pytest.mark.skipif(not (SCENE_MODEL_PATH / "config.json").is_file(),
                    reason="shipped scene model not present")
def test_shipped_model_loads_and_sees():
    model, proc = load_scene_model()
    assert model.dtype == torch.float32
    size_mb = sum(f.stat().st_size for f in SCENE_MODEL_PATH.glob("*.safetensors")) / 2**20
    assert size_mb < 20
    exs = make_dataset("attribute", 16)
    inputs = proc(images=[e.image for e in exs], text=["<image> " + e.question for e in exs],
                  return_tensors="pt", padding=True)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    preds = proc.tokenizer.batch_decode(out[:, inputs.input_ids.shape[1]:],
                                        skip_special_tokens=True)
    acc = sum(p.strip() == e.answer for p, e in zip(preds, exs)) / len(exs)
    assert acc >= 0.75, list(zip(preds, [e.answer for e in exs]))


def test_load_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_scene_model(tmp_path)
