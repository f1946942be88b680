"""Shared by the lmms-eval tests: lmms-eval itself, the shipped model, CLI runs."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vtp_compile.integrations.lmms_eval import TASKS_DIR
from vtp_compile.scenes import SCENE_MODEL_PATH


def require_lmms_eval():
    """lmms_eval, or a skip: the main suite's environment has no lmms-eval; `make
    test-lmms-eval` sets VTP_LMMS_REQUIRED=1, where a missing lmms-eval is a failure."""
    if os.environ.get("VTP_LMMS_REQUIRED"):
        return importlib.import_module("lmms_eval")
    return pytest.importorskip("lmms_eval", reason="lmms-eval not installed (make test-lmms-eval)")


def offline_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               TOKENIZERS_PARALLELISM="false")
    return env


def lmms_eval_cli(tmp_path: Path, model_args: str, tasks: str, out: Path, *extra: str,
                  limit: int = 4, batch_size: int = 4, timeout: int = 600,
                  pretrained: Path | str = SCENE_MODEL_PATH):
    """``lmms-eval --model vtp ...`` in a subprocess: the console script beside this Python
    (what a researcher runs), else ``python -m lmms_eval``; the shipped scene model unless
    ``pretrained`` names another checkpoint."""
    script = Path(sys.executable).parent / "lmms-eval"
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "lmms_eval"]
    cmd = [*launcher, "--model", "vtp", "--model_args", f"pretrained={pretrained},{model_args}",
           "--tasks", tasks, "--include_path", str(TASKS_DIR), "--limit", str(limit),
           "--batch_size", str(batch_size), "--output_path", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=offline_env(tmp_path),
                          timeout=timeout, cwd=tmp_path)


def results_file(out: Path) -> dict:
    files = sorted(out.rglob("*_results.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"*_samples_{task}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
