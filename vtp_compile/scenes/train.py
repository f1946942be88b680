"""Train the scene model from scratch on procedurally generated scenes (CPU, minutes).

Two stages inside one wall-time budget. (1) Vision warm-up: the vision tower, projector and
training-only linear heads learn per-patch targets alone (content: colour x kind and the
shape's kind; scene: the shape's grid cell, left-to-right rank, colour and kind counts), at
~0.27 s/step instead of ~1 s for the full model. (2) Multi-task QA: every training sequence is
one image followed by several questions of different tasks with their answers (packing: the
image is encoded once for ~6 supervised answers), plus the same per-patch losses and a
training-only selection head (:class:`SelectionHead`: the token before each answer must find
the patches of the shapes its question names in decoder hidden states). Scenes are
generated on the fly from training seeds (below :data:`~vtp_compile.scenes.tasks.EVAL_SEED`),
so no scene repeats and the held-out range is never touched. The vision tower's position
embeddings start from a 2-D sin-cos table.

Run (the defaults are the shipped checkpoint's recipe; see docs/scenes.md)::

    python -m vtp_compile.scenes.train --threads 1 --out vtp_compile/assets/scene_llava
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .generator import COLOURS, generate_scene
from .model import CLIP_MEAN, CLIP_STD, SceneModelSize, build_model, build_processor, size_dict
from .targets import (AUX_PRESETS, AUX_TARGETS, CONTENT_TARGETS, MAX_SHAPES, SelectionHead,
                      patch_targets, selection_masks)
from .tasks import (EVAL_SEED, MAX_TASK_SALT, TASKS, TRAIN_SEED, ask, scene_seed,
                    scene_shape_range)

# harder tasks get more of each batch
TASK_WEIGHTS = {"attribute": 1.0, "counting": 1.5, "grounding": 1.5, "ordered": 1.5,
                "relations": 1.5}
_SEED_STRIDE = 50_000_000  # per-run offset inside the training seed range


def pixel_tensor(images) -> torch.Tensor:
    """Fast equivalent of the processor's image path for 112×112 RGB images: [B, 3, H, W]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 255.0
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class Packed:
    """One training sequence: an image and several ``(task, question, answer)`` about it."""

    image: object
    scene: object
    qas: list[tuple[str, str, str]]


def qas_of(item) -> list[tuple[str, str, str]]:
    """``(task, question, answer)`` of a :class:`Packed` sequence or of one ``Example``."""
    return item.qas if isinstance(item, Packed) else [(item.task, item.question, item.answer)]


def encode_batch(items, tokenizer, n_image_tokens: int):
    """Right-padded ``input_ids``, ``attention_mask``, answer-only ``labels`` and answer spans.

    Each item is a :class:`Packed` sequence ``<s> <image>*N q1 a1 </s> q2 a2 </s> ...`` (or an
    ``Example``, one question). The first question sits exactly where it does at inference
    (``"<image> question"``); the later ones reuse the image's encoding for more supervision
    per step. ``spans`` lists ``(row, task, first_label_pos, end_pos)`` for per-task accuracy.
    """
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    prefix = [tokenizer.bos_token_id] + [image_id] * n_image_tokens
    return pack_rows(tokenizer, [prefix] * len(items), [qas_of(item) for item in items])


def pack_rows(tokenizer, prefixes: list[list[int]], qas: list[list[tuple]]):
    """Rows ``prefix q1 a1 </s> q2 a2 </s> ...``, right-padded: ``(input_ids, attention_mask,
    labels, spans)``; labels cover the answers only, ``spans`` lists ``(row, task,
    first_label_pos, end_pos)`` of every answer."""
    rows, label_rows, spans = [], [], []
    for i, (prefix, pairs) in enumerate(zip(prefixes, qas)):
        row, lab = list(prefix), [-100] * len(prefix)
        for task, question, answer in pairs:
            q = tokenizer(question, add_special_tokens=False).input_ids
            ans = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            row += q
            lab += [-100] * len(q)
            spans.append((i, task, len(row), len(row) + len(ans)))
            row += ans
            lab += ans
        rows.append(row)
        label_rows.append(lab)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, label_rows)):
        ids[i, :len(r)] = torch.tensor(r)
        labels[i, :len(r)] = torch.tensor(lab)
        mask[i, :len(r)] = 1
    return ids, mask, labels, spans


def init_sincos_positions(model, scale: float = 0.4, temperature: float = 100.0) -> None:
    """Initialise the vision tower's (learned) patch position embeddings with a 2-D sin-cos
    table (half the channels encode the row, half the column), so "where" is readable in every
    patch from step 0 instead of being learned from a 0.02-std random start. The CLS position
    keeps its random init; the table stays trainable."""
    emb = model.model.vision_tower.embeddings.position_embedding.weight
    n, dim = emb.shape[0] - 1, emb.shape[1]
    grid, quarter = math.isqrt(n), emb.shape[1] // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                            torch.arange(grid, dtype=torch.float32), indexing="ij")
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        ang = coord[:, None] * omega[None, :]
        parts += [torch.sin(ang), torch.cos(ang)]
    table = torch.cat(parts, dim=1)
    with torch.no_grad():
        emb[1:, :table.shape[1]] = scale * table
        if table.shape[1] < dim:
            emb[1:, table.shape[1]:] = 0.0


def paraphrase(question: str) -> str | None:
    """Training-only alternate wording that puts the colour word right before ``?``
    (``how many red shapes ?`` -> ``how many shapes red ?``, ``what shape is the red one ?`` ->
    ``what shape is red ?``), or None for questions without one. Uses only tokenizer words."""
    w = question.split()
    if w[:2] == ["how", "many"] and len(w) == 5 and w[2] in COLOURS:
        return f"how many shapes {w[2]} ?"
    if w[:4] == ["what", "shape", "is", "the"] and len(w) == 7 and w[4] in COLOURS:
        return f"what shape is {w[4]} ?"
    return None


class SeedMixer:
    """An endless stream of packed sequences from this run's share of the training seed range:
    a task is drawn by weight, :meth:`_sequence` (the subclass's) builds one item from the task's
    next seed, or None when its content admits no question."""

    def __init__(self, seed: int, weights: dict[str, float], max_qa: int, tries: int, salt: int):
        start = TRAIN_SEED + seed * _SEED_STRIDE
        # seeds of this run stay below EVAL_SEED, where held-out seeds begin
        if start + _SEED_STRIDE + salt > EVAL_SEED:
            raise ValueError(f"seed {seed} would reach the held-out seed range")
        self.limit = start + _SEED_STRIDE
        self.next_seed = {t: start for t in weights}
        self.names = list(weights)
        self.weights = [weights[t] for t in self.names]
        self.rng = random.Random(seed)
        self.max_qa = max_qa
        self.tries = tries

    def _take_seed(self, task: str) -> int:
        s = self.next_seed[task]
        if s >= self.limit:
            raise RuntimeError("training seed range exhausted")
        self.next_seed[task] = s + 1
        return s

    def _order(self, qas: list) -> list:
        """The first question (the drawn task's) and up to ``max_qa - 1`` others, shuffled."""
        first, rest = qas[0], qas[1:]
        self.rng.shuffle(rest)
        qas = [first] + rest[:self.max_qa - 1]
        self.rng.shuffle(qas)
        return qas

    def _sequence(self, task: str):
        raise NotImplementedError

    def batch(self, n: int) -> list:
        """``n`` packed sequences."""
        out: list = []
        while len(out) < n:
            item = self._sequence(self.rng.choices(self.names, self.weights)[0])
            if item is not None:
                out.append(item)
        return out


class TaskMixer(SeedMixer):
    """Endless stream of packed training sequences over the training seed range.

    Each sequence's scene comes from a task drawn by weight (so it has that task's shape-count
    range and seed stream); then up to ``max_qa`` distinct questions of *all* tasks that the
    scene admits are asked about it, in random order.
    """

    def __init__(self, seed: int, weights: dict[str, float] = TASK_WEIGHTS, max_qa: int = 6,
                 tries: int = 2, paraphrase_p: float = 0.0):
        super().__init__(seed, weights, max_qa, tries, MAX_TASK_SALT)
        # curriculum: cap on the number of shapes per scene (None: each task's full range)
        self.max_shapes: int | None = None
        self.paraphrase_p = paraphrase_p  # chance of :func:`paraphrase`'s wording per question

    def _sequence(self, task: str) -> Packed | None:
        sseed = scene_seed(task, self._take_seed(task))
        lo, hi = scene_shape_range(task)
        if self.max_shapes is not None:
            hi = max(lo, min(hi, self.max_shapes))
        image, scene = generate_scene(sseed, n_shapes=(lo, hi))
        qas, seen = [], set()
        for k, other in enumerate([task] + [t for t in TASKS for _ in range(self.tries)]):
            qa = ask(other, scene, np.random.default_rng([sseed, 0xA5, k]))
            if qa is not None and qa[0] not in seen:
                seen.add(qa[0])
                alt = paraphrase(qa[0]) if self.paraphrase_p > 0 else None
                if alt is not None and self.rng.random() < self.paraphrase_p:
                    qa = (alt, qa[1])
                qas.append((other, *qa))
        if not qas:
            return None
        return Packed(image, scene, self._order(qas))


CURRICULUM_START = 2  # shape cap at the start of a curriculum


def curriculum_cap(progress: float, span: float) -> int | None:
    """Shape cap at ``progress`` (0 -> 1) of a curriculum over the first ``span`` of training:
    :data:`CURRICULUM_START` at 0, rising linearly to :data:`MAX_SHAPES` at ``span``; ``None``
    (no cap) once it is reached or when ``span`` is 0."""
    if span <= 0 or progress >= span:
        return None
    return CURRICULUM_START + int((MAX_SHAPES - CURRICULUM_START) * progress / span)


def lr_at(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of the peak by
    ``progress`` (0 -> 1)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, max(0.0, progress))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _vision_warmup(model, aux_loss, mixer, captured, aux_head, minutes, max_steps, lr,
                   batch_size, scale, bf16, log_every):
    """Stage 1: train vision tower + projector + auxiliary heads on the per-patch losses only."""
    inner = model.model
    params = (list(inner.vision_tower.parameters()) + list(inner.multi_modal_projector.parameters())
              + list(aux_head.parameters()))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    t0 = time.time()
    ema, ema_parts, history, done = None, {}, [], 0
    warm = max(1, min(100, max_steps // 10))
    for step in range(max_steps):
        progress = max(step / max_steps, (time.time() - t0) / (60 * minutes))
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress, lr, warm)
        examples = mixer.batch(batch_size)
        pixels = pixel_tensor([ex.image for ex in examples])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            inner.get_image_features(pixel_values=pixels)  # the projector hook captures it
        loss, parts = aux_loss(examples, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        done = step + 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        for n, v in parts.items():
            ema_parts[n] = v.item() if n not in ema_parts else 0.95 * ema_parts[n] + 0.05 * v.item()
        if step % log_every == 0:
            rec = {"step": step, "s": round(time.time() - t0), "aux": round(ema, 4),
                   **{n: round(v, 3) for n, v in ema_parts.items()}}
            history.append(rec)
            tqdm.write("vision warm-up " + json.dumps(rec))
    captured.clear()
    wall = time.time() - t0
    tqdm.write(f"vision warm-up: {done} steps in {wall:.0f}s, aux {ema or 0:.4f}")
    return {"steps_done": done, "wall_s": round(wall, 1), "lr": lr, "batch_size": batch_size,
            "scene_aux_scale": scale, "minutes": minutes,
            "final_aux_ema": {n: round(v, 4) for n, v in ema_parts.items()}, "history": history}


def train(steps: int = 4000, out: str | Path = "vtp_compile/assets/scene_llava", seed: int = 0,
          batch_size: int = 32, lr: float = 1.5e-3, warmup: int = 150, bf16: bool = True,
          threads: int | None = None, time_limit_min: float = 27.0,
          size: SceneModelSize | None = None, aux_weight: float = 0.5,
          aux_targets: str = "scene", sincos_pos: bool = True, max_qa: int = 6,
          train_attn: str = "eager", log_every: int = 100, scene_aux_scale: float = 0.2,
          qa_tries: int = 3, vision_warmup_min: float = 8.0, vision_warmup_steps: int = 100_000,
          vision_lr: float | None = 2e-3, vision_batch_size: int | None = None,
          vision_scene_aux_scale: float | None = 0.5,
          task_loss_weights: dict[str, float] | None = None, qa_vision_lr_scale: float = 1.0,
          curriculum: float = 0.0, paraphrase_p: float = 0.0, select_weight: float = 0.5,
          select_layer: int = 1):
    """Train a scene model and save it (model + processor) to ``out``. Returns the model.

    ``aux_targets``: ``"scene"`` supervises the targets of :data:`AUX_PRESETS` ``["scene"]``,
    ``"class"`` only the patch content; the scene targets' losses are scaled by ``scene_aux_scale``
    relative to the content loss. ``train_attn``: attention kernel used while training (``"eager"``
    is faster than SDPA for these short sequences on CPU); the saved config uses SDPA.

    ``task_loss_weights``: weight of each task's answer tokens in the QA loss (default 1).

    Vision warm-up (``vision_warmup_min`` > 0): first train only the vision tower, projector and
    auxiliary heads on the per-patch losses (no language model: ~3.5x cheaper per step) for that
    many minutes (or ``vision_warmup_steps``), with its own LR schedule (peak ``vision_lr``,
    batch ``vision_batch_size``, scene-target scale ``vision_scene_aux_scale``; ``None`` means
    the main stage's value); then train the whole model on QA + auxiliary losses for the rest
    of ``time_limit_min``, which covers both stages.

    ``qa_vision_lr_scale``: the vision tower's learning rate in the QA stage, relative to
    ``lr``; ``0`` freezes the tower there (no backward through it: ~20% cheaper steps, and the
    warmed-up features are not disturbed by the early QA gradients). The projector always
    trains.

    ``curriculum`` (fraction of the QA stage, 0 = off): the QA stage starts on scenes of at most
    :data:`CURRICULUM_START` shapes and raises the cap linearly to every task's full range by
    that fraction of its progress (selection among few shapes is learned first); the vision
    warm-up always sees the full range.

    ``paraphrase_p``: chance that a colour-selecting counting or attribute question is asked in
    :func:`paraphrase`'s training-only wording (0 = off).

    ``select_weight``: weight of the :class:`SelectionHead` loss on decoder hidden state
    ``select_layer`` (0 = off). With it the language model learns to look up shapes by colour
    as well as by kind; without it, it learned kind only (docs/scenes.md, runs R-U).

    ``aux_targets``: also ``"scene+colour"`` (the scene targets plus a full-weight colour one).
    """
    if qa_vision_lr_scale < 0:
        raise ValueError(f"qa_vision_lr_scale must be >= 0, got {qa_vision_lr_scale}")
    if threads:
        torch.set_num_threads(threads)
    size = size or SceneModelSize()
    processor = build_processor()
    tok = processor.tokenizer
    model = build_model(tok, size, seed=seed)
    if sincos_pos:
        init_sincos_positions(model)
    model.set_attn_implementation(train_attn)
    model.train()
    n_image = model.config.image_seq_length
    # auxiliary per-patch classifiers on the projected visual tokens (training only, not saved)
    hidden = model.config.text_config.hidden_size
    if aux_targets not in AUX_PRESETS:
        raise ValueError(f"unknown aux_targets {aux_targets!r}; valid: {sorted(AUX_PRESETS)}")
    names = list(AUX_PRESETS[aux_targets])
    widths = [AUX_TARGETS[n] for n in names]
    aux_head = torch.nn.Linear(hidden, sum(widths))
    captured = {}
    hook = model.model.multi_modal_projector.register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("visual", out))
    select_head = SelectionHead(hidden) if select_weight > 0 else None
    if select_head is not None and not 0 <= select_layer <= model.config.text_config.num_hidden_layers:
        raise ValueError(f"select_layer must be in [0, {model.config.text_config.num_hidden_layers}]"
                         f", got {select_layer}")
    params = (list(model.parameters()) + list(aux_head.parameters())
              + (list(select_head.parameters()) if select_head is not None else []))
    mixer = TaskMixer(seed, max_qa=max_qa, tries=qa_tries, paraphrase_p=paraphrase_p)
    t0 = time.time()

    def aux_loss(examples, scale):
        visual = captured.pop("visual").float().reshape(len(examples), n_image, -1)
        aux_logits = aux_head(visual).split(widths, dim=-1)
        targets = patch_targets(examples, names)
        per = {n: torch.nn.functional.cross_entropy(
            lg.reshape(-1, w), targets[n].reshape(-1), ignore_index=-100)
            for n, w, lg in zip(names, widths, aux_logits)}
        with torch.no_grad():  # content accuracy on shape patches (background is easy)
            cls = targets["class"]
            fg = cls > 0
            per["fg_acc"] = (aux_logits[0].argmax(-1)[fg] == cls[fg]).float().mean()
        return (sum(v * (1.0 if n in CONTENT_TARGETS else scale) for n, v in per.items()
                    if n != "fg_acc"), per)

    vision_meta = None
    if vision_warmup_min > 0 and aux_weight > 0:
        vision_meta = _vision_warmup(
            model, aux_loss, mixer, captured, aux_head, minutes=vision_warmup_min,
            max_steps=vision_warmup_steps, lr=vision_lr or lr,
            batch_size=vision_batch_size or batch_size,
            scale=scene_aux_scale if vision_scene_aux_scale is None else vision_scene_aux_scale,
            bf16=bf16, log_every=log_every)
    t_main = time.time()
    main_min = time_limit_min - (t_main - t0) / 60
    tower = list(model.model.vision_tower.parameters())
    tower_ids = {id(p) for p in tower}
    groups = [{"params": [p for p in params if id(p) not in tower_ids], "scale": 1.0}]
    if qa_vision_lr_scale > 0:
        groups.append({"params": tower, "scale": qa_vision_lr_scale})
    else:  # frozen: no gradients, no backward through the tower
        for p in tower:
            p.requires_grad_(False)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    ema_loss, ema_aux, ema_sel, ema_acc = None, None, None, {t: None for t in TASKS}
    bar = tqdm(range(steps), desc="train", dynamic_ncols=True, mininterval=10)
    done = 0
    history = []
    for step in bar:
        # progress is whichever runs out first, steps or wall time, so the schedule always
        # completes inside the time budget (a busy CPU gives fewer, fully-annealed steps)
        progress = max(step / steps, (time.time() - t_main) / (60 * max(main_min, 1e-3)))
        if progress >= 1.0:
            tqdm.write(f"time limit {time_limit_min} min reached at step {done}; saving")
            break
        for g in opt.param_groups:
            g["lr"] = g["scale"] * lr_at(step, progress, lr, warmup)
        mixer.max_shapes = curriculum_cap(progress, curriculum)
        examples = mixer.batch(batch_size)
        ids, mask, labels, spans = encode_batch(examples, tok, n_image)
        pixels = pixel_tensor([ex.image for ex in examples])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out_ = model(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                         output_hidden_states=select_head is not None)
        logits = out_.logits[:, :-1].float()
        target = labels[:, 1:]
        if task_loss_weights:
            # per-answer loss weights by task (mean over answer tokens, weighted)
            tok_w = torch.zeros(target.shape)
            for row, task, lo, hi in spans:
                tok_w[row, lo - 1:hi - 1] = task_loss_weights.get(task, 1.0)
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                reduction="none")
            loss = (ce * tok_w.reshape(-1)).sum() / tok_w.sum()
        else:
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     target.reshape(-1), ignore_index=-100)
        total = loss
        if aux_weight > 0:
            aux, _ = aux_loss(examples, scene_aux_scale)
            total = loss + aux_weight * aux
        sel = None
        if select_head is not None:
            masks = selection_masks([(ex.scene, [q for _, q, _ in qas_of(ex)])
                                     for ex in examples])
            sel = select_head.loss(out_.hidden_states[select_layer], spans, masks, n_image)
            if sel is not None:
                total = total + select_weight * sel
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        done = step + 1
        # teacher-forced exact match per answer: a cheap live accuracy signal
        with torch.no_grad():
            hit = (logits.argmax(-1) == target)
        for row, task, lo, hi in spans:
            good = float(hit[row, lo - 1:hi - 1].all())
            prev = ema_acc[task]
            ema_acc[task] = good if prev is None else 0.98 * prev + 0.02 * good
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        if aux_weight > 0:
            ema_aux = aux.item() if ema_aux is None else 0.95 * ema_aux + 0.05 * aux.item()
        if sel is not None:
            ema_sel = sel.item() if ema_sel is None else 0.95 * ema_sel + 0.05 * sel.item()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{ema_loss:.3f}", aux=f"{ema_aux or 0:.3f}",
                            **{t[:4]: f"{a:.2f}" for t, a in ema_acc.items() if a is not None})
        if step % log_every == 0 or step == steps - 1:
            accs = {t: round(a, 3) for t, a in ema_acc.items() if a is not None}
            history.append({"step": step, "s": round(time.time() - t0), "loss": round(ema_loss, 4),
                            "aux": round(ema_aux or 0, 4), "tf_acc": accs,
                            **({"select": round(ema_sel, 4)} if ema_sel is not None else {})})
            tqdm.write(f"step {step} loss {ema_loss:.4f} aux {ema_aux or 0:.4f} "
                       + (f"select {ema_sel:.4f} " if ema_sel is not None else "") + "tf-acc "
                       + json.dumps(accs) + f" {time.time() - t0:.0f}s")
    bar.close()
    hook.remove()
    for p in tower:
        p.requires_grad_(True)
    model.set_attn_implementation("sdpa")
    model.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    wall = time.time() - t0
    meta = {"steps_done": done, "steps_planned": steps, "batch_size": batch_size, "lr": lr,
            "warmup": warmup, "seed": seed, "bf16_autocast": bf16, "train_attn": train_attn,
            "aux_weight": aux_weight, "aux_targets": names, "scene_aux_scale": scene_aux_scale,
            "sincos_pos_init": sincos_pos,
            "max_qa": max_qa, "qa_tries": qa_tries, "time_limit_min": time_limit_min,
            "vision_warmup": vision_meta, "task_loss_weights": task_loss_weights,
            "qa_vision_lr_scale": qa_vision_lr_scale, "curriculum": curriculum,
            "paraphrase_p": paraphrase_p, "select_weight": select_weight,
            "select_layer": select_layer,
            "threads": threads,
            "wall_s": round(wall, 1), "steps_per_s": round(done / wall, 3),
            "size": size_dict(size),
            "final_loss_ema": ema_loss, "final_teacher_forced_acc_ema": ema_acc,
            "history": history,
            "train_seed_range": [TRAIN_SEED + seed * _SEED_STRIDE,
                                 TRAIN_SEED + (seed + 1) * _SEED_STRIDE],
            "eval_seed_start": EVAL_SEED}
    (out / "training_meta.json").write_text(json.dumps(meta, indent=2))
    return model


def main(argv=None) -> None:
    """Command-line entry: ``python -m vtp_compile.scenes.train --steps N --out DIR``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--out", default="vtp_compile/assets/scene_llava")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-bf16", action="store_true", help="train in plain fp32")
    p.add_argument("--aux-weight", type=float, default=0.5,
                   help="weight of the auxiliary per-patch losses (0 disables them)")
    p.add_argument("--aux-targets", choices=sorted(AUX_PRESETS), default="scene",
                   help="per-patch targets: 'scene' = content + the shape's grid cell, "
                        "left-to-right rank and colour/kind counts; 'scene+colour' adds the "
                        "shape's colour as a full-weight target; 'class' = content only")
    p.add_argument("--scene-aux-scale", type=float, default=0.2,
                   help="weight of each scene target's loss relative to the content loss")
    p.add_argument("--no-sincos-pos", action="store_true",
                   help="keep the random init of the vision position embeddings")
    p.add_argument("--max-qa", type=int, default=6, help="questions packed per image")
    p.add_argument("--qa-tries", type=int, default=3,
                   help="candidate questions drawn per task for each image (before the max-qa cut)")
    p.add_argument("--train-attn", choices=["eager", "sdpa"], default="eager",
                   help="attention kernel while training (the saved model uses SDPA)")
    p.add_argument("--time-limit-min", type=float, default=27.0,
                   help="wall-time budget: the LR schedule anneals by whichever of steps or "
                        "time runs out first, then the model is saved")
    p.add_argument("--vision-warmup-min", type=float, default=8.0,
                   help="first train only vision tower + projector on the per-patch losses for "
                        "this many minutes (counted inside --time-limit-min)")
    p.add_argument("--vision-warmup-steps", type=int, default=100_000,
                   help="step cap of the vision warm-up (its LR schedule anneals by whichever "
                        "of steps or minutes runs out first)")
    p.add_argument("--vision-lr", type=float, default=2e-3,
                   help="peak LR of the warm-up (default: --lr)")
    p.add_argument("--vision-batch-size", type=int, default=None, help="batch of the warm-up")
    p.add_argument("--vision-scene-aux-scale", type=float, default=0.5,
                   help="--scene-aux-scale during the warm-up (default: --scene-aux-scale)")
    p.add_argument("--feature-layer", type=int, default=SceneModelSize.vision_feature_layer,
                   help="vision hidden state the projector reads (-1 last, -2 LLaVA's default)")
    p.add_argument("--task-loss-weights", default="",
                   help="QA loss weight per task, e.g. 'grounding=2,counting=1.5' (others 1)")
    p.add_argument("--qa-vision-lr-scale", type=float, default=1.0,
                   help="vision tower LR in the QA stage relative to --lr (0 freezes it there)")
    p.add_argument("--curriculum", type=float, default=0.0,
                   help="raise the shapes-per-scene cap from 2 to the full range over this "
                        "fraction of the QA stage (0: off)")
    p.add_argument("--paraphrase", type=float, default=0.0,
                   help="chance that a colour-selecting question is asked in the training-only "
                        "wording with the colour right before '?' (0: off)")
    p.add_argument("--select-weight", type=float, default=0.5,
                   help="weight of the training-only selection head's loss: from decoder "
                        "hidden states, the last question token must score the patches of the "
                        "shapes the question names highest (0: off)")
    p.add_argument("--select-layer", type=int, default=1,
                   help="decoder hidden state the selection head reads (0: its input)")
    p.add_argument("--log-every", type=int, default=100, help="log / history interval (steps)")
    a = p.parse_args(argv)
    train(steps=a.steps, out=a.out, seed=a.seed, batch_size=a.batch_size, lr=a.lr,
          warmup=a.warmup, bf16=not a.no_bf16, threads=a.threads,
          time_limit_min=a.time_limit_min, aux_weight=a.aux_weight, aux_targets=a.aux_targets,
          sincos_pos=not a.no_sincos_pos, max_qa=a.max_qa, train_attn=a.train_attn,
          scene_aux_scale=a.scene_aux_scale, qa_tries=a.qa_tries,
          size=SceneModelSize(vision_feature_layer=a.feature_layer),
          vision_warmup_min=a.vision_warmup_min, vision_warmup_steps=a.vision_warmup_steps,
          vision_lr=a.vision_lr, vision_batch_size=a.vision_batch_size,
          vision_scene_aux_scale=a.vision_scene_aux_scale, log_every=a.log_every,
          task_loss_weights=parse_task_weights(a.task_loss_weights),
          qa_vision_lr_scale=a.qa_vision_lr_scale, curriculum=a.curriculum,
          paraphrase_p=a.paraphrase, select_weight=a.select_weight,
          select_layer=a.select_layer)


def parse_task_weights(text: str) -> dict[str, float] | None:
    """``"grounding=2,counting=1.5"`` -> ``{"grounding": 2.0, "counting": 1.5}`` (None if empty)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in TASKS or not value:
            raise ValueError(f"bad task weight {part!r}; use task=weight with tasks {list(TASKS)}")
        out[name.strip()] = float(value)
    return out or None


if __name__ == "__main__":
    main()
