"""Procedural scenes, question tasks and the project's own small LLaVA model trained on them.

- :mod:`.generator` — deterministic 112×112 scenes of coloured shapes on textured clutter;
- :mod:`.tasks` — attribute / counting / grounding / ordered / relations questions;
- :mod:`.model` — builders for the tokenizer, processor and ``LlavaForConditionalGeneration``;
- :mod:`.clips` — short clips of such scenes in which shapes move, appear and disappear;
- :mod:`.clip_tasks` — order / counting / grounding questions about clips;
- :mod:`.train` — the CPU training script of the image model (run U);
- :mod:`.finetune` (data: :mod:`.clip_training`) — the fine-tuning that taught it clips.

Example::

    >>> from vtp_compile.scenes import load_scene_model, make_dataset
    >>> model, processor = load_scene_model()
    >>> ex = make_dataset("attribute", n=1)[0]
"""

from __future__ import annotations

from pathlib import Path

from .generator import Scene, Shape, generate_scene
from .tasks import EVAL_SEED, TASKS, TRAIN_SEED, Example, make_dataset

SCENE_MODEL_PATH = Path(__file__).resolve().parent.parent / "assets" / "scene_llava"

__all__ = ["EVAL_SEED", "TASKS", "TRAIN_SEED", "Example", "SCENE_MODEL_PATH", "Scene", "Shape",
           "generate_scene", "load_scene_model", "make_dataset"]


def load_scene_model(path: str | Path | None = None, dtype=None):
    """Load ``(model, processor)``; the shipped scene model unless ``path`` is given.

    The model is returned in eval mode, fp32 by default, with SDPA attention. Loading is offline
    (``local_files_only``).
    """
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = Path(path) if path is not None else SCENE_MODEL_PATH
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model checkpoint (config.json) at {path}")
    model = LlavaForConditionalGeneration.from_pretrained(
        path, dtype=dtype or torch.float32, attn_implementation="sdpa", local_files_only=True)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    return model.eval(), processor
