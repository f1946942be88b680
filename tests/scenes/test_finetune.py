"""Fine-tuning for clips: from an image-only checkpoint, vocabulary grown with ids kept; the
shipped model sees clips."""
import json

import pytest
import torch

from vtp_compile.bench.data import scene_datasets
from vtp_compile.bench.evaluate import evaluate_model
from vtp_compile.scenes import SCENE_MODEL_PATH, load_scene_model
from vtp_compile.scenes import model as scene_model
from vtp_compile.scenes.clip_tasks import CLIP_TASK_NAMES, clip_vocabulary
from vtp_compile.scenes.finetune import finetune, main
from vtp_compile.scenes.model import SceneModelSize, build_model, build_processor

TINY = SceneModelSize(vision_hidden=32, vision_layers=2, vision_heads=2, vision_mlp=64,
                      text_hidden=32, text_layers=2, text_heads=2, text_kv_heads=2, text_mlp=64)


@pytest.fixture()
def image_only_ckpt(tmp_path, monkeypatch):
    """A tiny checkpoint whose tokenizer predates the clip words."""
    with monkeypatch.context() as mp:
        mp.setattr(scene_model, "clip_vocabulary", lambda: [])
        proc = build_processor()
    path = tmp_path / "image_only"
    build_model(proc.tokenizer, TINY).save_pretrained(path)
    proc.save_pretrained(path)
    return path, proc.tokenizer.get_vocab()


def test_finetune_grows_the_vocabulary_and_keeps_image_ids(tmp_path, image_only_ckpt):
    init, old_vocab = image_only_ckpt
    out = tmp_path / "out"
    main(["--init", str(init), "--out", str(out), "--steps", "2", "--image-batch", "2",
          "--clip-batch", "1", "--clip-max-qa", "3", "--threads", "1", "--log-every", "1"])
    model, proc = load_scene_model(out)
    vocab = proc.tokenizer.get_vocab()
    assert all(vocab[w] == i for w, i in old_vocab.items())
    assert set(clip_vocabulary()) <= set(vocab) and len(vocab) == len(old_vocab) + len(clip_vocabulary())
    assert model.get_input_embeddings().num_embeddings == len(vocab)
    assert model.get_output_embeddings().out_features == len(vocab)
    assert model.config.text_config.max_position_embeddings >= 1 + 6 * 198
    meta = json.loads((out / "training_meta.json").read_text())
    ft = meta["finetune"]
    assert ft["steps_done"] == 2 and ft["tower_lr_scale"] == 0.0 and len(ft["history"]) == 2
    assert set(CLIP_TASK_NAMES) <= set(ft["final_teacher_forced_acc_ema"])
    # the tower was frozen: its weights are the initial checkpoint's
    start, _ = load_scene_model(init)
    for (n, a), b in zip(start.model.vision_tower.named_parameters(),
                         model.model.vision_tower.parameters()):
        assert torch.equal(a, b), n


@pytest.mark.skipif(not (SCENE_MODEL_PATH / "config.json").is_file(),
                    reason="shipped scene model not present")
def test_shipped_model_sees_clips():
    """The shipped model answers clip questions far above chance (held-out; 9 grid cells)."""
    model, proc = load_scene_model()
    assert set(clip_vocabulary()) <= set(proc.tokenizer.get_vocab())
    scores = evaluate_model(model, proc, scene_datasets(["clip_grounding"], 16), batch_size=16)
    assert scores["clip_grounding"].accuracy >= 0.5, scores["clip_grounding"].predictions
