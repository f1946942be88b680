"""A ``vtp`` option on a model without a vtp adapter is an error naming the families that prune
(vtp_compile/serving/vllm/guard.py). The model without an adapter here is the tiny LLaVA run by
vLLM's Transformers backend (``model_impl="transformers"``): vLLM's generic path for any
transformers VLM, which the plugin does not adapt."""
from __future__ import annotations

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


@pytest.fixture(scope="module")
def engine_tb(tiny):
    return _llm(tiny, limit_mm_per_prompt={"image": 1})


def test_request_option_is_refused_and_plain_requests_run(engine_tb, engine):
    ex = examples(1)[0]
    prompt = "<image> " + ex.question
    with pytest.raises(ValueError) as e:
        engine_tb.generate([request(prompt, [ex.image], VTP)], greedy(2))
    _names_families(str(e.value))
    out = engine_tb.generate([request(prompt, [ex.image])], greedy(4))[0]
    ref = engine.generate([request(prompt, [ex.image])], greedy(4))[0]   # vLLM's own LLaVA class
    assert list(out.prompt_token_ids) == list(ref.prompt_token_ids)
    assert list(out.outputs[0].token_ids) == list(ref.outputs[0].token_ids)
