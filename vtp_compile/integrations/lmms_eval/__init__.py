"""vtp inside lmms-eval: a model class, a local scene task and a results table.

Install ``pip install "vtp_compile[lmms-eval]"``; lmms-eval finds the model through the entry-point
group ``lmms_eval.models`` (:func:`.manifest.manifest`), so::

    lmms-eval --model vtp --model_args pretrained=PATH,method=fastv,budget=64 --tasks pope

The scene benchmark ships as lmms-eval tasks under :data:`TASKS_DIR` (``--include_path``): the
image group ``vtp_scenes`` and the video group ``vtp_scene_clips``.
Importing this package imports neither lmms_eval nor torch: :mod:`.model` does.

* :mod:`.model_args`: ``--model_args`` -> loader settings + validated vtp options;
* :mod:`.inputs`: prompt and processor inputs from lmms-eval's contexts and visuals;
* :mod:`.report`: what vtp pruned or left unpruned during a run;
* :mod:`.model`: the ``lmms`` subclass (``VTP``);
* :mod:`.scene_data`: the local scene-task data files (images and clips);
* :mod:`.scene_video`: the clip tasks' video files (lossless, written on first use);
* :mod:`.results`: the accuracy-retention table and plot from lmms-eval's output files.
"""
from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
SCENE_TASK_DIR = TASKS_DIR / "vtp_scenes"
CLIP_TASK_DIR = TASKS_DIR / "vtp_scene_clips"

__all__ = ["TASKS_DIR", "SCENE_TASK_DIR", "CLIP_TASK_DIR"]
