"""The VTP lmms class: validation before loading, failures stop the run, the report."""
import json
import subprocess

import pytest
import transformers

from vtp_compile import OptionError
from vtp_compile.integrations.lmms_eval import TASKS_DIR
from vtp_compile.scenes import SCENE_MODEL_PATH

from .helpers import lmms_eval_cli, offline_env, require_lmms_eval

require_lmms_eval()
from vtp_compile.integrations.lmms_eval.model import VTP, VtpRunAborted  # noqa: E402


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights fails: what passes validation gets this far and no further."""
    def refuse(*a, **k):
        raise AssertionError("weights loaded before the options were validated")
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", refuse)


def test_bad_options_raise_before_anything_loads(no_weights):
    with pytest.raises(OptionError, match="unknown method 'fastvv'; available"):
        VTP(pretrained="/does/not/exist", method="fastvv")
    # the depth needs the checkpoint's config (not its weights): layer 4 of a 4-layer decoder
    with pytest.raises(OptionError, match="layer 4 is out of range; this model has 4 decoder"):
        VTP(pretrained=str(SCENE_MODEL_PATH), method="fastv", budget=16, layer=4)
    with pytest.raises(AssertionError, match="weights loaded"):    # a good config reaches loading
        VTP(pretrained=str(SCENE_MODEL_PATH), method="fastv", budget=16, layer=3)


def test_cli_bad_option_exits_2_with_the_valid_ones(tmp_path):
    proc = lmms_eval_cli(tmp_path, "method=fastv,budgt=16", "vtp_scenes_attribute", tmp_path / "o")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "unknown option(s) ['budgt'] for method 'fastv'; valid options" in proc.stderr
    assert not list((tmp_path / "o").rglob("*_results.json"))


def _boom(gm, example_inputs):
    raise RuntimeError("boom: the inner compiler failed")


def test_generation_failure_stops_the_run_unscored(tmp_path):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager
    report = tmp_path / "vtp_report.json"
    lm = VTP(pretrained=str(SCENE_MODEL_PATH), method="fastv", budget=16, inner_backend=_boom,
             batch_size=2, report=str(report))
    with pytest.raises(VtpRunAborted) as info:
        simple_evaluate(model=lm, tasks=["vtp_scenes_attribute"], limit=2,
                        task_manager=TaskManager("ERROR", include_path=str(TASKS_DIR)))
    assert isinstance(info.value, SystemExit) and info.value.code == 3
    assert "boom" in repr(info.value.__cause__) and "no answer was scored" in str(info.value)
    saved = json.loads(report.read_text())
    assert "boom: the inner compiler failed" in saved["error"] and saved["method"] == "fastv"


def test_report_file_lists_the_sites(tmp_path):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager
    report = tmp_path / "r.json"
    lm = VTP(pretrained=str(SCENE_MODEL_PATH), method="divprune+fastv", **{
        "stage1.budget": 64, "stage2.budget": 8, "stage2.layer": 2}, inner_backend="eager",
        batch_size=2, report=str(report))
    res = simple_evaluate(model=lm, tasks=["vtp_scenes_counting"], limit=2,
                          task_manager=TaskManager("ERROR", include_path=str(TASKS_DIR)))
    saved = json.loads(report.read_text())
    assert saved["method"] == "chain:stages=" + json.dumps(lm.args.options["stages"], separators=(",", ":"))
    assert saved["pruned_graphs"] >= 1 and saved["unpruned_graphs"] == 0
    assert any("196 -> 64" in s for s in saved["sites"]) and any("64 -> 8" in s for s in saved["sites"])
    assert res["throughput"]["avg_vtp_pruned_graphs"] == saved["pruned_graphs"]


def test_cli_compile_failure_exits_3_with_no_results(tmp_path):
    # torch_xla is not installed: the inner compiler 'openxla' fails inside the first generate
    proc = lmms_eval_cli(tmp_path, "method=fastv,budget=16,inner_backend=openxla,threads=2",
                         "vtp_scenes_attribute", tmp_path / "o", limit=2, batch_size=2)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "vtp: generation failed, the run stops" in proc.stderr
    assert "no answer was scored" in proc.stderr
    assert not list((tmp_path / "o").rglob("*_results.json"))
