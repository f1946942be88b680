"""vLLM's real process layout (engine core and worker in their own processes), started fresh:
engine-wide options, the plugin switched off, a bad option at start-up."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .support import examples, greedy, request

pytestmark = pytest.mark.vllm
RUNNER = Path(__file__).with_name("run_engine.py")


def run(job, env=None, timeout=240):
    e = {k: v for k, v in os.environ.items() if k not in ("VLLM_ENABLE_V1_MULTIPROCESSING",
                                                          "VTP_VLLM_RECORD")}
    e.update(env or {})
    p = subprocess.run([sys.executable, str(RUNNER), json.dumps(job)], capture_output=True,
                       text=True, timeout=timeout, env=e, cwd=str(Path(__file__).parents[3]))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    return p, (json.loads(lines[-1][7:]) if lines else None)


def _local(engine, cases):
    exs = examples(4)
    outs = engine.generate([request(p, [exs[i].image for i in ims], o) for p, ims, o in cases],
                           greedy(6))
    return [[list(o.prompt_token_ids), list(o.outputs[0].token_ids)] for o in outs]


def test_engine_wide_options_and_request_override(engine, tiny):
    """``mm_processor_kwargs={"vtp": ...}`` on the engine prunes every request; a request's own
    ``vtp`` dict is merged over it. Same tokens as the in-process engine given per-request
    options."""
    exs = examples(4)
    cases = [("<image> " + exs[0].question, [0], None),
             ("<image> " + exs[1].question, [1], {"budget": 40}),
             ("<image> " + exs[2].question + " <image>", [2, 3], {"method": "random"})]
    wide = {"method": "divprune", "budget": 16}
    p, got = run({"model": str(tiny.path), "engine": {"mm_processor_kwargs": {"vtp": wide}},
                  "requests": [{"prompt": c[0], "images": c[1], "vtp": c[2]} for c in cases]})
    assert got is not None, p.stderr[-3000:]
    want = _local(engine, [(c[0], c[1], {**wide, **(c[2] or {})}) for c in cases])
    assert got == want
    assert sum(t == tiny.image_token for t in got[0][0]) == 16
    assert sum(t == tiny.image_token for t in got[2][0]) == 32


@pytest.mark.vllm_slow     # 30 s: make test-vllm-full (CI checks unconfigured requests against transformers)
def test_without_options_vllm_runs_as_without_the_plugin(engine, tiny):
    """VLLM_PLUGINS=vtp_cpu_compat loads only the torchvision workaround (without it vLLM's LLaVA
    does not import in this environment), not vtp's model classes: the same tokens as with the
    plugin loaded and no options."""
    exs = examples(4)
    cases = [("<image> " + exs[0].question, [0], None),
             ("<image> <image> " + exs[1].question, [1, 2], None)]
    p, got = run({"model": str(tiny.path),
                  "requests": [{"prompt": c[0], "images": c[1]} for c in cases]},
                 env={"VLLM_PLUGINS": "vtp_cpu_compat"})
    assert got is not None, p.stderr[-3000:]
    assert got == _local(engine, cases)


def test_bad_engine_option_fails_at_start_up(tiny):
    p, got = run({"model": str(tiny.path),
                  "engine": {"mm_processor_kwargs": {"vtp": {"method": "fastv", "budget": 8}}},
                  "requests": []})
    assert p.returncode != 0 and got is None
    assert "'fastv' cannot run in vLLM" in p.stderr
    assert "divprune" in p.stderr


def test_qwen_in_vllm_processes(engine_qwen, tiny_qwen):
    """Qwen2.5-VL with vLLM's engine-core and worker processes: the plugin's CPU-runner fix
    (vtp_compile/serving/vllm/compat.py) must take effect in the worker, where the runner is.
    Same tokens as the in-process engine."""
    from vtp_compile.testing.vllm_qwen import IMAGE

    from .qwen_support import qrequest
    exs = examples(4)
    cases = [(IMAGE + " " + exs[0].question, [0], {"method": "divprune", "budget": 9}),
             (IMAGE + " " + IMAGE + " " + exs[1].question, [1, 2], {"method": "random", "budget": 5}),
             (IMAGE + " " + exs[0].question, [0], None)]
    p, got = run({"model": str(tiny_qwen.path), "engine": {"limit_mm_per_prompt": {"image": 2}},
                  "requests": [{"prompt": c[0], "images": c[1], "vtp": c[2]} for c in cases]})
    assert got is not None, p.stderr[-3000:]
    outs = engine_qwen.generate([qrequest(c[0], [exs[i].image for i in c[1]], c[2]) for c in cases],
                                greedy(6))
    assert got == [[list(o.prompt_token_ids), list(o.outputs[0].token_ids)] for o in outs]


@pytest.mark.vllm_slow     # 30 s (a worker process starts and fails): make test-vllm-full
def test_vtp_beside_vllms_evs_fails_at_start_up(tiny_qwen):
    """vLLM's own video pruning (EVS, ``video_pruning_rate``) and vtp on one Qwen engine: both
    would append positions, so an engine-wide vtp option is refused at start-up."""
    from vtp_compile.testing.vllm_qwen import IMAGE
    p, got = run({"model": str(tiny_qwen.path),
                  "engine": {"video_pruning_rate": 0.5,
                             "mm_processor_kwargs": {"vtp": {"method": "divprune", "budget": 8}}},
                  "requests": [{"prompt": IMAGE + " a", "images": [0]}]})
    assert p.returncode != 0 and got is None
    out = p.stdout + p.stderr            # the worker process logs its exception on stdout
    assert "EVS cannot both prune one Qwen-VL engine: unset video_pruning_rate" in out
