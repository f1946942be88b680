"""The shipped scene-task data and task functions (no lmms-eval needed)."""
import importlib.util
import json

import numpy as np

from vtp_compile.integrations.lmms_eval import SCENE_TASK_DIR
from vtp_compile.integrations.lmms_eval.scene_data import DATA_DIR, SHIPPED_N, records, scene_image, write
from vtp_compile.scenes import make_dataset
from vtp_compile.scenes.tasks import TASKS


def _utils():
    spec = importlib.util.spec_from_file_location("vtp_scene_utils", SCENE_TASK_DIR / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shipped_files_equal_the_generator(tmp_path):
    write(tmp_path)
    for task in TASKS:
        shipped = (DATA_DIR / f"{task}.jsonl").read_text()
        assert shipped == (tmp_path / f"{task}.jsonl").read_text(), task
        assert len(shipped.splitlines()) == SHIPPED_N


def test_records_and_images_are_vtp_evals_examples():
    utils = _utils()
    for task in TASKS:
        exs = make_dataset(task, 6)
        for rec, ex in zip(records(task, 6), exs):
            assert (rec["question"], rec["answer"], rec["seed"]) == (ex.question, ex.answer, ex.seed)
            (img,) = utils.doc_to_visual(json.loads(json.dumps(rec)))
            assert np.array_equal(np.asarray(img), np.asarray(ex.image))
            assert utils.doc_to_text(rec) == ex.question
    first = make_dataset("counting", 1)[0]
    assert np.array_equal(np.asarray(scene_image("counting", first.seed)), np.asarray(first.image))


def test_scoring_is_exact_match_after_normalisation():
    utils = _utils()
    doc = {"answer": "red circle"}
    assert utils.process_results(doc, ["Red  circle."]) == {"exact_match": 1.0}
    assert utils.process_results(doc, ["red"]) == {"exact_match": 0.0}
    assert utils.doc_to_text({"question": "q ?"}, {"pre_prompt": "A: ", "post_prompt": " B"}) == "A: q ? B"
