"""Training data for clips: packed clip sequences, their token layout and selection targets.

A packed clip sequence is the inference prompt's visual part followed by several questions
with their answers::

    <s> frame 1 <image>*196 frame 2 <image>*196 ... q1 a1 </s> q2 a2 </s> ...

so the first question sits exactly where it does at inference (``frame 1 <image> ... q``,
the processor expanding each ``<image>`` to 196 tokens). The selection target of a question
(training-only head, as for images: :class:`~vtp_compile.scenes.targets.SelectionHead`) is the
patches, over all frames, of what the question points at: the named object in the asked frame
(``where is the red square in frame 2 ?``), the two named objects in every frame (``which
appeared first , ...``), every shape of the asked frame (``how many shapes in frame 3 ?``);
none for ``what moved left ?`` and ``how many shapes in the clip ?``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .clip_tasks import (CLIP_TASK_NAMES, MAX_CLIP_TASK_SALT, ask_clip, clip_object_range,
                         clip_seed)
from .clips import DEFAULT_FRAMES, generate_clip
from .targets import patch_shape_index
from .train import SeedMixer, pack_rows

CLIP_TASK_WEIGHTS = {"clip_order": 1.5, "clip_counting": 1.0, "clip_grounding": 1.5}


@dataclass
class PackedClip:
    """One training sequence: a clip's frames and several ``(task, question, answer)``."""

    frames: list
    clip: object
    qas: list[tuple[str, str, str]]


class ClipMixer(SeedMixer):
    """Endless stream of packed clip sequences from the training seed range: the clip comes
    from a task drawn by weight (its object-count range), then up to ``max_qa`` distinct
    questions of every clip task the clip admits (``tries`` candidates per task)."""

    def __init__(self, seed: int, n_frames: int = DEFAULT_FRAMES, max_qa: int = 6,
                 tries: int = 3, weights: dict[str, float] = CLIP_TASK_WEIGHTS):
        super().__init__(seed, weights, max_qa, tries, MAX_CLIP_TASK_SALT)
        self.n_frames = n_frames

    def _sequence(self, task: str) -> PackedClip | None:
        cseed = clip_seed(task, self._take_seed(task))
        frames, clip = generate_clip(cseed, self.n_frames, clip_object_range(task))
        qas, seen = [], set()
        for k, other in enumerate([task] + [t for t in CLIP_TASK_NAMES for _ in range(self.tries)]):
            qa = ask_clip(other, clip, np.random.default_rng([cseed, 0xC1, k]))
            if qa is not None and qa[0] not in seen:
                seen.add(qa[0])
                qas.append((other, *qa))
        if not qas:
            return None
        return PackedClip(frames, clip, self._order(qas))


def clip_prefix(tokenizer, n_frames: int, n_image_tokens: int) -> list[int]:
    """Token ids of ``<s> frame 1 <image>*N frame 2 <image>*N ...`` (what the processor makes
    of :func:`~vtp_compile.scenes.clip_tasks.frame_prompt`)."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = [tokenizer.bos_token_id]
    for t in range(n_frames):
        ids += tokenizer(f"frame {t + 1}", add_special_tokens=False).input_ids
        ids += [image_id] * n_image_tokens
    return ids


def encode_clip_batch(items: list[PackedClip], tokenizer, n_image_tokens: int):
    """Right-padded ``input_ids``, ``attention_mask``, answer-only ``labels``, answer ``spans``
    ``(row, task, first_label_pos, end_pos)`` and the ``[n_frames * N]`` visual positions
    (the same in every row: right padding, one frame count per batch)."""
    n_frames = len(items[0].frames)
    if any(len(it.frames) != n_frames for it in items):
        raise ValueError("one frame count per clip batch")
    prefix = clip_prefix(tokenizer, n_frames, n_image_tokens)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids, mask, labels, spans = pack_rows(tokenizer, [prefix] * len(items), [it.qas for it in items])
    visual = torch.tensor([p for p, t in enumerate(prefix) if t == image_id])
    return ids, mask, labels, spans, visual


def clip_selected(clip, question: str) -> dict[int, list[int]]:
    """``{frame (0-based): [track index, ...]}`` that ``question`` points at (see the module
    docstring); empty when it names nothing."""
    words = question.split()
    if "frame" in words:
        t = int(words[words.index("frame") + 1]) - 1
        if words[:2] == ["how", "many"]:
            return {t: [i for i, tr in enumerate(clip.tracks) if tr.boxes[t] is not None]}
        names = [(words[3], words[4])]  # where is the COLOUR KIND in frame T ?
        return {t: [i for i, tr in enumerate(clip.tracks) if (tr.colour, tr.kind) in names]}
    if words[:3] == ["which", "appeared", "first"]:
        names = {(words[5], words[6]), (words[9], words[10])}
        chosen = [i for i, tr in enumerate(clip.tracks) if (tr.colour, tr.kind) in names]
        return {t: chosen for t in range(clip.n_frames)}
    return {}


def clip_selection_masks(items: list[PackedClip]) -> list[np.ndarray | None]:
    """Per question of every item, in order: a ``[n_frames * 196]`` bool mask over the clip's
    visual tokens (None where the question points at nothing visible)."""
    out = []
    for item in items:
        clip = item.clip
        per_frame = [patch_shape_index(clip.frame_scene(t)) for t in range(clip.n_frames)]
        # frame_scene keeps present tracks in track order: map track -> index in that frame
        present = [[i for i, tr in enumerate(clip.tracks) if tr.boxes[t] is not None]
                   for t in range(clip.n_frames)]
        for _, question, _ in item.qas:
            sel = clip_selected(clip, question)
            parts = []
            for t in range(clip.n_frames):
                want = [present[t].index(i) + 1 for i in sel.get(t, []) if i in present[t]]
                parts.append(np.isin(per_frame[t], want) if want else
                             np.zeros_like(per_frame[t], dtype=bool))
            mask = np.concatenate(parts)
            out.append(mask if mask.any() else None)
    return out


def selection_loss(head, hidden, spans, masks, visual: torch.Tensor) -> torch.Tensor | None:
    """:class:`~vtp_compile.scenes.targets.SelectionHead`'s loss with the visual tokens at
    positions ``visual`` (a clip's frames) instead of ``1 .. N``."""
    picked = [(row, lo - 1, m) for (row, _, lo, _), m in zip(spans, masks) if m is not None]
    if not picked:
        return None
    h = torch.nn.functional.layer_norm(hidden.float(), hidden.shape[-1:])
    rows = torch.tensor([r for r, _, _ in picked])
    pos = torch.tensor([p for _, p, _ in picked])
    q = head.q(h[rows, pos])
    k = head.k(h[rows][:, visual])
    scores = torch.einsum("sd,snd->sn", q, k) * head.scale
    target = torch.from_numpy(np.stack([m for _, _, m in picked]))
    hit = scores.masked_fill(~target, float("-inf")).logsumexp(-1)
    return (scores.logsumexp(-1) - hit).mean()
