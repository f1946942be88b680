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

from ..scenes.tasks import EVAL_SEED, TASKS, Example, check_task, make_dataset


def parse_tasks(spec: str | list[str] | None) -> list[str]:
    """``"all"``/None -> every scene task; otherwise a comma list, each validated."""
    if spec is None or spec == "all" or spec == ["all"]:
        return list(TASKS)
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    return [check_task(t.strip()) for t in names if t.strip()]


def scene_datasets(tasks: list[str], n: int, seed: int = EVAL_SEED) -> dict[str, list[Example]]:
    """``n`` held-out examples per scene task (example seeds from ``seed``)."""
    return {t: make_dataset(t, n, seed) for t in tasks}


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
