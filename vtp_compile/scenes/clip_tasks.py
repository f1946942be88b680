"""Question templates over generated clips (video tasks), each with an exact-match answer.

Three tasks, answers derived from the :class:`~vtp_compile.scenes.clips.Clip` description only;
frames are numbered from 1 in questions, as in the prompt's frame labels:

| task | question | answer | ambiguity guard |
|---|---|---|---|
| ``clip_order`` | ``which appeared first , the red square or the blue circle ?`` | ``blue circle`` | the two objects first appear in different frames |
| ``clip_order`` | ``what moved left ?`` / ``what moved right ?`` | ``red square`` | exactly one object's centre ends left (right) of where it started |
| ``clip_counting`` | ``how many shapes in frame 3 ?`` / ``how many shapes in the clip ?`` | ``2`` | -- (objects are unique by colour and kind, so "in the clip" counts distinct objects) |
| ``clip_grounding`` | ``where is the red square in frame 2 ?`` | ``row 1 col 3`` | present in that frame, centre ≥ 3 px from grid lines there; a moving object whose cell changes is preferred |

Seeds follow the image tasks: held-out examples start at
:data:`~vtp_compile.scenes.tasks.EVAL_SEED`, training draws below it.

Example::

    >>> from vtp_compile.scenes.clip_tasks import make_clip_dataset
    >>> ex = make_clip_dataset("clip_counting", n=1)[0]
    >>> len(ex.frames), ex.question.startswith("how many")
    (4, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .clips import DEFAULT_FRAMES, Clip, generate_clip
from .tasks import EVAL_SEED, Example, _clear_of_grid

_SALT_BASE = 5 * 7_919_993  # after the image tasks' scene-seed offsets


@dataclass
class ClipExample(Example):
    """A question about a clip: ``frames`` (the images, in order) and ``clip`` (its
    description). ``image`` is the first frame, so code that shows one picture still works."""

    frames: list | None = None
    clip: Clip | None = None


def frame_prompt(n_frames: int, image_token: str = "<image>") -> str:
    """The visual part of a clip prompt: ``frame 1 <image> frame 2 <image> ...``. Each frame's
    visual tokens are one contiguous run between text tokens (vtp's frame boundaries)."""
    return " ".join(f"frame {t + 1} {image_token}" for t in range(n_frames))


def _ask_order(clip: Clip, rng: np.random.Generator) -> tuple[str, str] | None:
    tracks = list(clip.tracks)
    if rng.random() < 0.3:  # motion questions are rarer to admit, so they are asked more
        pairs = [(a, b) for i, a in enumerate(tracks) for b in tracks[i + 1:]
                 if a.frames[0] != b.frames[0]]
        if not pairs:
            return None
        a, b = pairs[int(rng.integers(len(pairs)))]
        if rng.random() < 0.5:
            a, b = b, a
        first = a if a.frames[0] < b.frames[0] else b
        return f"which appeared first , the {a.name} or the {b.name} ?", first.name
    side = "left" if rng.random() < 0.5 else "right"
    movers = [t for t in tracks if (t.dx() < 0 if side == "left" else t.dx() > 0)]
    if len(movers) != 1:
        return None
    return f"what moved {side} ?", movers[0].name


def _ask_counting(clip: Clip, rng: np.random.Generator) -> tuple[str, str]:
    if rng.random() < 0.5:
        return "how many shapes in the clip ?", str(len(clip.tracks))
    t = int(rng.integers(clip.n_frames))
    return f"how many shapes in frame {t + 1} ?", str(len(clip.frame_scene(t).shapes))


def _ask_grounding(clip: Clip, rng: np.random.Generator) -> tuple[str, str] | None:
    cands = [(tr, t) for tr in clip.tracks for t in tr.frames if _clear_of_grid(tr.shape(t))]
    if not cands:
        return None
    # prefer moments at which the object's cell differs from another of its frames
    moving = [(tr, t) for tr, t in cands
              if any(tr.shape(u).cell != tr.shape(t).cell for u in tr.frames)]
    if moving and rng.random() < 0.75:
        cands = moving
    tr, t = cands[int(rng.integers(len(cands)))]
    row, col = tr.shape(t).cell
    return f"where is the {tr.name} in frame {t + 1} ?", f"row {row} col {col}"


# task -> (question function, object-count range of its clips, rng salt)
_SPECS = {
    "clip_order": (_ask_order, (2, 5), 11),
    "clip_counting": (_ask_counting, (1, 5), 12),
    "clip_grounding": (_ask_grounding, (1, 5), 13),
}
CLIP_TASK_NAMES = tuple(_SPECS)
_TASK_SALT = {name: _SALT_BASE + i * 7_919_993 for i, name in enumerate(_SPECS)}
MAX_CLIP_TASK_SALT = max(_TASK_SALT.values())


def is_clip_task(task: str) -> bool:
    return task in _SPECS


def check_clip_task(task: str) -> str:
    """Return ``task`` if it is a clip task, else raise ``ValueError`` listing them."""
    if task not in _SPECS:
        raise ValueError(f"unknown clip task {task!r}; valid clip tasks: {', '.join(_SPECS)}")
    return task


def ask_clip(task: str, clip: Clip, rng: np.random.Generator) -> tuple[str, str] | None:
    """A ``(question, answer)`` of clip task ``task`` about ``clip``, or None if none is
    unambiguous."""
    return _SPECS[check_clip_task(task)][0](clip, rng)


def clip_object_range(task: str) -> tuple[int, int]:
    return _SPECS[check_clip_task(task)][1]


def clip_seed(task: str, example_seed: int) -> int:
    """The clip seed behind example seed ``example_seed`` of ``task``."""
    return int(example_seed) + _TASK_SALT[check_clip_task(task)]


def _make_task(task: str) -> Callable[[int], ClipExample | None]:
    fn, n_objects, salt = _SPECS[task]

    def build(seed: int, n_frames: int = DEFAULT_FRAMES) -> ClipExample | None:
        frames, clip = generate_clip(seed, n_frames=n_frames, n_objects=n_objects)
        qa = fn(clip, np.random.default_rng(np.random.SeedSequence([int(seed), salt])))
        if qa is None:
            return None
        return ClipExample(image=frames[0], question=qa[0], answer=qa[1], task=task,
                           seed=seed, frames=frames, clip=clip)

    build.__doc__ = f"Example of clip task {task!r} from clip seed ``seed`` (None if unanswerable)."
    return build


CLIP_TASKS: dict[str, Callable[..., ClipExample | None]] = {t: _make_task(t) for t in _SPECS}


def iter_clip_examples(task: str, seed: int, n_frames: int = DEFAULT_FRAMES):
    """Yield examples of clip task ``task`` forever from example seeds ``seed, seed+1, ...``
    (seeds whose clip admits no unambiguous question are skipped)."""
    fn = CLIP_TASKS[check_clip_task(task)]
    s = int(seed)
    while True:
        ex = fn(clip_seed(task, s), n_frames)
        if ex is not None:
            ex.seed = s
            yield ex
        s += 1


def make_clip_dataset(task: str, n: int, seed: int = EVAL_SEED,
                      n_frames: int = DEFAULT_FRAMES) -> list[ClipExample]:
    """The first ``n`` examples of clip task ``task`` from example seed ``seed`` (held-out
    by default)."""
    it = iter_clip_examples(task, seed, n_frames)
    return [next(it) for _ in range(int(n))]


def clip_vocabulary() -> list[str]:
    """Words of clip questions, answers and frame labels that the image tasks do not use,
    in a fixed order (appended to the tokenizer's vocabulary, so image token ids are kept)."""
    return ["frame", "in", "clip", "which", "appeared", "first", ",", "or", "moved"]
