"""Question templates over generated scenes, each with an exact-match answer.

Every task is a question function ``(scene, rng) -> (question, answer) | None`` (see
:func:`ask`) plus the shape-count range of its scenes; ``TASKS[task](scene_seed)`` generates a
suited scene and asks an unambiguous question about it, or returns ``None`` when that scene does
not admit one (the dataset builder then moves on to the next seed). Answers are derived only
from the :class:`~vtp_compile.scenes.generator.Scene` description.

Seeds: training draws example seeds from ``[TRAIN_SEED, EVAL_SEED)``; held-out evaluation
starts at ``EVAL_SEED``, so the two never share a scene.

Example::

    >>> from vtp_compile.scenes.tasks import make_dataset
    >>> ex = make_dataset("counting", n=1, seed=EVAL_SEED)[0]
    >>> ex.task, ex.question.startswith("how many")
    ('counting', True)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from .generator import COLOURS, GRID, IMAGE_SIZE, KINDS, Scene, Shape, generate_scene

TRAIN_SEED = 0
EVAL_SEED = 1_000_000_000
_GRID_CLEARANCE = 3.0  # px: grounding targets keep their centre this far from grid lines
_ORDER_GAP = 6.0  # px: ordered / relation answers need shapes this far apart in x


@dataclass
class Example:
    """One question about one image. ``answer`` is a space-separated word string."""

    image: Image.Image
    question: str
    answer: str
    task: str
    seed: int = -1
    scene: Scene | None = None


def check_task(task: str) -> str:
    """Return ``task`` if known, else raise ``ValueError`` listing the valid task names."""
    if task not in _SPECS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(_SPECS)}")
    return task


def _rng(seed: int, salt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), salt]))


def _unique(shapes, key) -> list[Shape]:
    counts = Counter(key(s) for s in shapes)
    return [s for s in shapes if counts[key(s)] == 1]


def _ask_attribute(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    if rng.random() < 0.5:
        cands = _unique(scene.shapes, lambda s: s.kind)
        if not cands:
            return None
        s = cands[int(rng.integers(len(cands)))]
        return f"what colour is the {s.kind} ?", s.colour
    cands = _unique(scene.shapes, lambda s: s.colour)
    if not cands:
        return None
    s = cands[int(rng.integers(len(cands)))]
    return f"what shape is the {s.colour} one ?", s.kind


def _ask_counting(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    if rng.random() < 0.5:
        colour = str(rng.choice(list(COLOURS)))
        return f"how many {colour} shapes ?", str(sum(s.colour == colour for s in scene.shapes))
    kind = str(rng.choice(KINDS))
    return f"how many {kind}s ?", str(sum(s.kind == kind for s in scene.shapes))


def _clear_of_grid(s: Shape) -> bool:
    lines = [IMAGE_SIZE * k / GRID for k in range(1, GRID)]
    return all(abs(c - l) >= _GRID_CLEARANCE for c in s.centre for l in lines)


def _ask_grounding(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    cands = [s for s in _unique(scene.shapes, lambda s: (s.colour, s.kind)) if _clear_of_grid(s)]
    if not cands:
        return None
    s = cands[int(rng.integers(len(cands)))]
    row, col = s.cell
    return f"where is the {s.colour} {s.kind} ?", f"row {row} col {col}"


def _left_to_right(scene: Scene) -> list[Shape] | None:
    """Shapes sorted by centre x if there are 2-4 of them and all are clearly apart in x."""
    if not 2 <= len(scene.shapes) <= 4:
        return None
    order = sorted(scene.shapes, key=lambda s: s.centre[0])
    gaps = [b.centre[0] - a.centre[0] for a, b in zip(order, order[1:])]
    return order if all(g >= _ORDER_GAP for g in gaps) else None


def _ask_ordered(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    order = _left_to_right(scene)
    if order is None:
        return None
    if rng.random() < 0.5:
        return "list the colours from left to right .", " ".join(s.colour for s in order)
    return "list the shapes from left to right .", " ".join(s.kind for s in order)


def _ask_relations(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    order = _left_to_right(scene)
    if order is None:
        return None
    ids = Counter((s.colour, s.kind) for s in scene.shapes)
    # anchor second from the left: exactly one shape is left of it (mirrored for right)
    side = "left" if rng.random() < 0.5 else "right"
    anchor, other = (order[1], order[0]) if side == "left" else (order[-2], order[-1])
    if ids[(anchor.colour, anchor.kind)] != 1:
        return None
    return (f"what is {side} of the {anchor.colour} {anchor.kind} ?",
            f"{other.colour} {other.kind}")


# task -> (question function, shape-count range of its scenes, rng salt)
_SPECS = {
    "attribute": (_ask_attribute, (1, 6), 1),
    "counting": (_ask_counting, (1, 8), 2),
    "grounding": (_ask_grounding, (1, 6), 3),
    "ordered": (_ask_ordered, (2, 4), 4),
    "relations": (_ask_relations, (2, 4), 5),
}


def ask(task: str, scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """A ``(question, answer)`` of ``task`` about ``scene``, or None if none is unambiguous."""
    return _SPECS[check_task(task)][0](scene, rng)


def scene_shape_range(task: str) -> tuple[int, int]:
    """The shape-count range of the scenes ``task`` draws its examples from."""
    return _SPECS[check_task(task)][1]


def _make_task(task: str) -> Callable[[int], Example | None]:
    fn, n_shapes, salt = _SPECS[task]

    def build(seed: int) -> Example | None:
        image, scene = generate_scene(seed, n_shapes=n_shapes)
        qa = fn(scene, _rng(seed, salt))
        return None if qa is None else Example(image, qa[0], qa[1], task, seed, scene)

    build.__doc__ = f"Example of task {task!r} from scene seed ``seed`` (None if unanswerable)."
    return build


TASKS: dict[str, Callable[[int], Example | None]] = {t: _make_task(t) for t in _SPECS}
_TASK_SALT = {name: i * 7_919_993 for i, name in enumerate(TASKS)}
MAX_TASK_SALT = max(_TASK_SALT.values())


def scene_seed(task: str, example_seed: int) -> int:
    """The scene seed behind example seed ``example_seed`` of ``task`` (>= the example seed)."""
    return int(example_seed) + _TASK_SALT[check_task(task)]


def iter_examples(task: str, seed: int):
    """Yield examples of ``task`` forever, from example seeds ``seed, seed+1, ...``.

    Seeds whose scene does not admit an unambiguous question are skipped. Different tasks
    offset their scenes so that the same seed range does not reuse images across tasks.
    """
    fn = TASKS[check_task(task)]
    s = int(seed)
    while True:
        ex = fn(scene_seed(task, s))
        if ex is not None:
            ex.seed = s
            yield ex
        s += 1


def make_dataset(task: str, n: int, seed: int = EVAL_SEED) -> list[Example]:
    """The first ``n`` examples of ``task`` starting at example seed ``seed``.

    ``seed`` defaults to the held-out range; training uses seeds below ``EVAL_SEED``.
    """
    it = iter_examples(task, seed)
    return [next(it) for _ in range(int(n))]


def vocabulary() -> list[str]:
    """Every word any question or answer can contain (the tokenizer's word list)."""
    words = {"what", "colour", "is", "the", "shape", "one", "how", "many", "shapes", "where",
             "row", "col", "list", "colours", "from", "left", "to", "right", "of", "?", "."}
    words |= set(COLOURS) | set(KINDS) | {f"{k}s" for k in KINDS}
    words |= {str(i) for i in range(0, 9)}
    return sorted(words)
