"""A ``vtp`` option on a model without a vtp adapter is an error naming the families that prune
(vtp_compile/serving/vllm/guard.py). The model without an adapter here is a tiny Idefics3 on
vLLM's own ``Idefics3ForConditionalGeneration`` class, registered back over the plugin's adapter
while its engines are built (``support.unadapted``): the same code path as Qwen3.5 or any other
class the plugin does not adapt."""
from __future__ import annotations

import pytest
import torch

from .support import MAX_LEN, examples, greedy, request, unadapted

pytestmark = pytest.mark.vllm
VTP = {"method": "divprune", "budget": 8}


def _llm(tiny, **kw):
    from vllm import LLM
    with unadapted("Idefics3ForConditionalGeneration", "idefics3"):
        return LLM(str(tiny.path), enforce_eager=True, dtype="float32", max_model_len=MAX_LEN,
                   kv_cache_memory_bytes=64 << 20, distributed_executor_backend="uni",
                   limit_mm_per_prompt={"image": 1}, seed=0, **kw)


def _names_families(msg: str):
    assert "no adapter for vLLM's Idefics3ForConditionalGeneration" in msg
    from vtp_compile.serving.vllm.plugin import FAMILIES
    for arch, fam in FAMILIES.items():
        assert f"{fam} ({arch})" in msg


def test_engine_wide_option_fails_at_start_up(tiny_idefics3_tiled):
    with pytest.raises(ValueError) as e:
        _llm(tiny_idefics3_tiled, mm_processor_kwargs={"vtp": VTP})
    _names_families(str(e.value))


def test_bad_engine_wide_option_gets_its_own_error_first(tiny_idefics3_tiled):
    with pytest.raises(ValueError, match="'fastv' cannot run in vLLM"):
        _llm(tiny_idefics3_tiled, mm_processor_kwargs={"vtp": {"method": "fastv"}})


def test_request_option_is_refused_and_plain_requests_run(engine_unadapted, tiny_idefics3_tiled):
    """Plain requests run as in transformers; one with a ``vtp`` option is refused."""
    ex = examples(1)[0]
    prompt = "<image> " + ex.question
    out = engine_unadapted.generate([request(prompt, [ex.image])], greedy(4))[0]
    inputs = tiny_idefics3_tiled.hf_inputs(prompt, [ex.image])
    with torch.no_grad():
        ref = tiny_idefics3_tiled.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    n = inputs["input_ids"].shape[1]
    assert list(out.prompt_token_ids) == inputs["input_ids"][0].tolist()
    assert list(out.outputs[0].token_ids) == ref[0, n:].tolist()
    with pytest.raises(ValueError) as e:
        engine_unadapted.generate([request(prompt, [ex.image], VTP)], greedy(4))
    _names_families(str(e.value))
