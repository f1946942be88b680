"""A ``vtp`` option on a model without a vtp adapter is an error naming the families that prune
(vtp_compile/serving/vllm/guard.py). The model without an adapter here is the tiny LLaVA run by
vLLM's Transformers backend (``model_impl="transformers"``): vLLM's generic path for any
transformers VLM, which the plugin does not adapt. An engine on that backend runs in a fresh
process (tests/serving/vllm/run_engine.py): in this process it would share vLLM's compile
decorators with the session's engine of vLLM's own LLaVA class, and break it."""
from __future__ import annotations

import json

import pytest

from .support import MAX_LEN, examples, greedy, request

pytestmark = pytest.mark.vllm
VTP = {"method": "divprune", "budget": 8}


def _llm(tiny, **kw):
    from vllm import LLM
    return LLM(str(tiny.path), enforce_eager=True, dtype="float32", max_model_len=MAX_LEN,
               kv_cache_memory_bytes=64 << 20, distributed_executor_backend="uni",
               model_impl="transformers", seed=0, **kw)


def _names_families(msg: str):
    assert "no adapter for vLLM's TransformersMultiModalForCausalLM" in msg
    from vtp_compile.serving.vllm.plugin import FAMILIES
    for arch, fam in FAMILIES.items():
        assert f"{fam} ({arch})" in msg


def test_engine_wide_option_fails_at_start_up(tiny):
    with pytest.raises(ValueError) as e:
        _llm(tiny, mm_processor_kwargs={"vtp": VTP})
    _names_families(str(e.value))


def test_bad_engine_wide_option_gets_its_own_error_first(tiny):
    with pytest.raises(ValueError, match="'fastv' cannot run in vLLM"):
        _llm(tiny, mm_processor_kwargs={"vtp": {"method": "fastv"}})


def test_request_option_is_refused_and_plain_requests_run(engine, tiny):
    """Plain requests run as on vLLM's own LLaVA class; one with a ``vtp`` option is refused."""
    from .test_engine_process import run
    prompt = "<image> " + examples(1)[0].question
    p, got = run({"model": str(tiny.path), "engine": {"model_impl": "transformers"}, "max_tokens": 4,
                  "requests": [{"prompt": prompt, "images": [0]}],
                  "refused": [{"prompt": prompt, "images": [0], "vtp": VTP}]})
    assert got is not None, p.stderr[-3000:]
    ref = engine.generate([request(prompt, [examples(1)[0].image])], greedy(4))[0]   # vLLM's LLaVA
    assert got == [[list(ref.prompt_token_ids), list(ref.outputs[0].token_ids)]]
    refused = [ln for ln in p.stdout.splitlines() if "REFUSED" in ln]
    assert len(refused) == 1 and refused[0].startswith("REFUSED "), p.stdout[-2000:]
    _names_families(json.loads(refused[0][len("REFUSED "):]))
