"""Evaluation data: procedural scene tasks, or a user's JSONL file of image questions.

JSONL format, one object per line::

    {"image": "imgs/0001.png", "question": "what colour is the car?", "answer": "red"}

``image`` is resolved relative to the JSONL file's folder; an optional ``"task"`` field groups
lines into tasks (default task name ``"jsonl"``).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from ..scenes.clip_tasks import CLIP_TASK_NAMES, is_clip_task, make_clip_dataset
from ..scenes.clips import DEFAULT_FRAMES
from ..scenes.tasks import EVAL_SEED, TASKS, Example, check_task, make_dataset

# task-list aliases: "all" is every image task (as before clips existed), "clips" every clip task
TASK_ALIASES = {"all": list(TASKS), "images": list(TASKS), "clips": list(CLIP_TASK_NAMES)}


def parse_tasks(spec: str | list[str] | None) -> list[str]:
    """``"all"``/None -> every image scene task; ``"clips"`` -> every clip task; otherwise a
    comma list of task names and aliases, each validated."""
    if spec is None:
        return list(TASKS)
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for name in (t.strip() for t in names):
        if not name:
            continue
        for task in TASK_ALIASES.get(name, [name]):
            if not is_clip_task(task):
                try:
                    check_task(task)
                except ValueError:
                    raise ValueError(f"unknown task {task!r}; valid tasks: "
                                     f"{', '.join(list(TASKS) + list(CLIP_TASK_NAMES))} "
                                     f"(aliases: {', '.join(TASK_ALIASES)})") from None
            if task not in out:
                out.append(task)
    return out


def scene_datasets(tasks: list[str], n: int, seed: int = EVAL_SEED,
                   n_frames: int = DEFAULT_FRAMES) -> dict[str, list[Example]]:
    """``n`` held-out examples per scene or clip task (example seeds from ``seed``; clips of
    ``n_frames`` frames)."""
    return {t: make_clip_dataset(t, n, seed, n_frames) if is_clip_task(t) else make_dataset(t, n, seed)
            for t in tasks}


def load_jsonl(path: str | Path, n: int | None = None,
               tasks: list[str] | None = None) -> dict[str, list[Example]]:
    """Read a JSONL dataset, grouped by its ``task`` field; at most ``n`` examples per task.

    Raises ``ValueError`` naming the line for malformed lines or missing fields, and
    ``FileNotFoundError`` for a missing image.
    """
    path = Path(path)
    out: dict[str, list[Example]] = {}
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
            missing = [k for k in ("image", "question", "answer") if k not in rec]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing field(s) {missing}")
            task = str(rec.get("task", "jsonl"))
            if tasks is not None and task not in tasks:
                continue
            bucket = out.setdefault(task, [])
            if n is not None and len(bucket) >= n:
                continue
            img_path = Path(rec["image"])
            if not img_path.is_absolute():
                img_path = path.parent / img_path
            if not img_path.is_file():
                raise FileNotFoundError(f"{path}:{lineno}: image not found: {img_path}")
            with Image.open(img_path) as im:
                image = im.convert("RGB")
            bucket.append(Example(image=image, question=str(rec["question"]),
                                  answer=str(rec["answer"]), task=task, seed=lineno))
    if not out:
        raise ValueError(f"{path}: no examples" + (f" for tasks {tasks}" if tasks else ""))
    return out
