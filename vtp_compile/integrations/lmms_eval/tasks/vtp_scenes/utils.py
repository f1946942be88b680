"""Functions of the vtp scene tasks (lmms-eval loads this file by path from the task YAMLs).

The same examples, prompts and scoring as ``vtp eval``: the question is the whole context, the
image is drawn from the record's task and seed, exact match after
:func:`vtp_compile.bench.evaluate.normalize_answer`.
"""
from vtp_compile.bench.evaluate import normalize_answer
from vtp_compile.integrations.lmms_eval.scene_data import scene_image


def doc_to_visual(doc):
    return [scene_image(doc["task"], int(doc["seed"]))]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def process_results(doc, results):
    return {"exact_match": float(normalize_answer(results[0]) == normalize_answer(doc["answer"]))}
