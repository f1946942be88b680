"""Fine-tune the scene model to see clips as well as images (CPU, minutes).

Starts from a trained image checkpoint (the shipped one by default). The tokenizer gains the
clip words (:func:`~vtp_compile.scenes.clip_tasks.clip_vocabulary`, appended: image-word ids
are kept; new embedding rows start at the mean of the old ones). Every step trains on a batch
of packed image sequences (the image training's :class:`~vtp_compile.scenes.train.TaskMixer`,
so image accuracy is rehearsed, not forgotten) and a batch of packed clip sequences
(:class:`~vtp_compile.scenes.clip_training.ClipMixer`: ``frame 1 <image> frame 2 <image> ...``
then several clip questions), the answers' cross-entropy plus a fresh training-only selection
head on both (not saved). The vision tower is frozen by default (``--tower-lr-scale 0``: the
image features stay what they were, and no backward runs through 4 frames of tower); the
projector and the language model train. LR: warm-up, then cosine to 10 % by whichever of the
step count or the wall-time budget runs out first.

Run (the shipped clip checkpoint's recipe; docs/scenes.md)::

    python -m vtp_compile.scenes.finetune --threads 1 --out vtp_compile/assets/scene_llava
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import SCENE_MODEL_PATH, load_scene_model
from .clip_tasks import CLIP_TASK_NAMES
from .clip_training import (ClipMixer, clip_selection_masks, encode_clip_batch,
                            selection_loss)
from .model import MAX_POSITIONS, build_processor
from .targets import SelectionHead, selection_masks
from .tasks import TASKS
from .train import TaskMixer, encode_batch, lr_at, pixel_tensor, qas_of


def extend_vocabulary(model, processor):
    """Swap in the tokenizer with the clip words and grow the embeddings to match; returns the
    new processor. Raises if an image word would change id."""
    new = build_processor()
    old_vocab, new_vocab = processor.tokenizer.get_vocab(), new.tokenizer.get_vocab()
    moved = [w for w, i in old_vocab.items() if new_vocab.get(w) != i]
    if moved:
        raise ValueError(f"token ids would change for {moved[:5]}")
    if len(new.tokenizer) != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(new.tokenizer), mean_resizing=True)
    model.config.text_config.max_position_embeddings = MAX_POSITIONS
    return new


def _ce(logits, labels):
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
        ignore_index=-100)


def _track(ema, spans, logits, labels):
    with torch.no_grad():
        hit = logits[:, :-1].argmax(-1) == labels[:, 1:]
    for row, task, lo, hi in spans:
        good = float(hit[row, lo - 1:hi - 1].all())
        ema[task] = good if ema.get(task) is None else 0.98 * ema[task] + 0.02 * good


def finetune(init: str | Path = SCENE_MODEL_PATH, out: str | Path = "vtp_compile/assets/scene_llava",
             steps: int = 3000, time_limit_min: float = 25.0, seed: int = 3,
             image_batch: int = 16, clip_batch: int = 8, lr: float = 1e-3, warmup: int = 50,
             tower_lr_scale: float = 0.0, select_weight: float = 0.5, select_layer: int = 1,
             max_qa: int = 6, clip_max_qa: int = 10, threads: int | None = None, bf16: bool = True,
             log_every: int = 50):
    """Fine-tune ``init`` on images + clips and save model and processor to ``out``."""
    if threads:
        torch.set_num_threads(threads)
    model, processor = load_scene_model(init)
    processor = extend_vocabulary(model, processor)
    tok = processor.tokenizer
    model.set_attn_implementation("eager")
    model.train()
    n_image = model.config.image_seq_length
    hidden = model.config.text_config.hidden_size
    tower = list(model.model.vision_tower.parameters())
    tower_ids = {id(p) for p in tower}
    head = SelectionHead(hidden) if select_weight > 0 else None
    rest = [p for p in model.parameters() if id(p) not in tower_ids]
    groups = [{"params": rest + (list(head.parameters()) if head else []), "scale": 1.0}]
    if tower_lr_scale > 0:
        groups.append({"params": tower, "scale": tower_lr_scale})
    else:
        for p in tower:
            p.requires_grad_(False)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    images = TaskMixer(seed, max_qa=max_qa, tries=3)
    clips = ClipMixer(seed, max_qa=clip_max_qa, tries=4)
    t0 = time.time()
    ema: dict[str, float | None] = {}
    ema_loss = ema_sel = None
    history, done = [], 0
    bar = tqdm(range(steps), desc="finetune", dynamic_ncols=True, mininterval=10)
    for step in bar:
        progress = max(step / steps, (time.time() - t0) / (60 * time_limit_min))
        if progress >= 1.0:
            tqdm.write(f"time limit {time_limit_min} min reached at step {done}; saving")
            break
        for g in opt.param_groups:
            g["lr"] = g["scale"] * lr_at(step, progress, lr, warmup)
        img_items, clip_items = images.batch(image_batch), clips.batch(clip_batch)
        ids, mask, labels, spans = encode_batch(img_items, tok, n_image)
        cids, cmask, clabels, cspans, visual = encode_clip_batch(clip_items, tok, n_image)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            o_img = model(input_ids=ids, attention_mask=mask,
                          pixel_values=pixel_tensor([it.image for it in img_items]),
                          output_hidden_states=head is not None)
            o_clip = model(input_ids=cids, attention_mask=cmask,
                           pixel_values=pixel_tensor([f for it in clip_items for f in it.frames]),
                           output_hidden_states=head is not None)
        loss = _ce(o_img.logits, labels) + _ce(o_clip.logits, clabels)
        total, sel_total = loss, None
        if head is not None:
            masks = selection_masks([(it.scene, [q for _, q, _ in qas_of(it)]) for it in img_items])
            parts = [head.loss(o_img.hidden_states[select_layer], spans, masks, n_image),
                     selection_loss(head, o_clip.hidden_states[select_layer], cspans,
                                    clip_selection_masks(clip_items), visual)]
            parts = [p for p in parts if p is not None]
            if parts:
                sel_total = sum(parts)
                total = total + select_weight * sel_total
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        done = step + 1
        _track(ema, spans, o_img.logits, labels)
        _track(ema, cspans, o_clip.logits, clabels)
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        if sel_total is not None:
            v = sel_total.item()
            ema_sel = v if ema_sel is None else 0.95 * ema_sel + 0.05 * v
        if step % log_every == 0:
            accs = {t: round(a, 3) for t, a in ema.items() if a is not None}
            history.append({"step": step, "s": round(time.time() - t0), "loss": round(ema_loss, 4),
                            "select": round(ema_sel or 0, 4), "tf_acc": accs})
            tqdm.write(f"step {step} loss {ema_loss:.4f} select {ema_sel or 0:.4f} tf-acc "
                       + json.dumps(accs) + f" {time.time() - t0:.0f}s")
    bar.close()
    for p in tower:
        p.requires_grad_(True)
    model.set_attn_implementation("sdpa")
    model.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    wall = time.time() - t0
    meta = {"finetune_from": str(init), "steps_done": done, "steps_planned": steps,
            "time_limit_min": time_limit_min, "wall_s": round(wall, 1),
            "steps_per_s": round(done / wall, 3), "seed": seed, "image_batch": image_batch,
            "clip_batch": clip_batch, "lr": lr, "warmup": warmup,
            "tower_lr_scale": tower_lr_scale, "select_weight": select_weight,
            "select_layer": select_layer, "max_qa": max_qa, "clip_max_qa": clip_max_qa, "threads": threads,
            "bf16_autocast": bf16, "image_tasks": list(TASKS), "clip_tasks": list(CLIP_TASK_NAMES),
            "final_loss_ema": ema_loss, "final_teacher_forced_acc_ema": ema,
            "history": history}
    return model, meta


def main(argv=None) -> None:
    """``python -m vtp_compile.scenes.finetune --init DIR --out DIR``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", default=str(SCENE_MODEL_PATH), help="checkpoint to start from")
    p.add_argument("--out", default="vtp_compile/assets/scene_llava")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--time-limit-min", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--image-batch", type=int, default=16)
    p.add_argument("--clip-batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--tower-lr-scale", type=float, default=0.0,
                   help="vision tower LR relative to --lr (0: frozen)")
    p.add_argument("--select-weight", type=float, default=0.5)
    p.add_argument("--select-layer", type=int, default=1)
    p.add_argument("--max-qa", type=int, default=6, help="questions packed per image")
    p.add_argument("--clip-max-qa", type=int, default=10,
                   help="questions packed per clip (its 4 x 196 visual tokens are encoded once)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--log-every", type=int, default=50)
    a = p.parse_args(argv)
    init_meta = Path(a.init) / "training_meta.json"
    base = json.loads(init_meta.read_text()) if init_meta.is_file() else None
    _, meta = finetune(a.init, a.out, a.steps, a.time_limit_min, a.seed, a.image_batch,
                       a.clip_batch, a.lr, a.warmup, a.tower_lr_scale, a.select_weight,
                       a.select_layer, a.max_qa, a.clip_max_qa, a.threads, not a.no_bf16, a.log_every)
    if base is not None and "finetune" in base:   # fine-tuning a fine-tuned checkpoint
        base = base.get("image_training", base)
    meta_out = {"image_training": base, "finetune": meta}
    (Path(a.out) / "training_meta.json").write_text(json.dumps(meta_out, indent=2))


if __name__ == "__main__":
    main()
