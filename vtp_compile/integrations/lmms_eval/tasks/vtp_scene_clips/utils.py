"""Functions of the vtp scene clip tasks (lmms-eval loads this file by path from the task YAMLs).

The same examples, question and scoring as ``vtp eval --tasks clips``: the visual is the clip
as a video file (written losslessly on first use from the record's task, seed and frame count),
which the model samples frames from; exact match after
:func:`vtp_compile.bench.evaluate.normalize_answer`.
"""
from vtp_compile.bench.evaluate import normalize_answer
from vtp_compile.integrations.lmms_eval.scene_video import clip_video


def doc_to_visual(doc):
    return [str(clip_video(doc["task"], int(doc["seed"]), int(doc["frames"])))]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def process_results(doc, results):
    return {"exact_match": float(normalize_answer(results[0]) == normalize_answer(doc["answer"]))}
