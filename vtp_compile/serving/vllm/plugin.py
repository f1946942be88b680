"""What the ``vllm.general_plugins`` entry point does, in every vLLM process.

It registers vtp's model classes over vLLM's own for the architectures it adapts (vLLM's
``ModelRegistry.register_model`` with a lazy ``"module:Class"`` string, so nothing is imported
until vLLM loads that architecture). The registered classes subclass vLLM's and behave exactly
like them unless ``mm_processor_kwargs`` holds a ``vtp`` entry. Models of other classes refuse
a ``vtp`` entry (:mod:`.guard`) instead of ignoring it.
"""
from __future__ import annotations

import logging

log = logging.getLogger("vtp_compile.serving.vllm")
_DONE = False
# architecture name -> "module:Class" of the adapter
ADAPTERS = {
    "LlavaForConditionalGeneration": "vtp_compile.serving.vllm.llava:VtpLlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration":
        "vtp_compile.serving.vllm.llava_next:VtpLlavaNextForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration":
        "vtp_compile.serving.vllm.llava_onevision:VtpLlavaOnevisionForConditionalGeneration",
    "Qwen2VLForConditionalGeneration": "vtp_compile.serving.vllm.qwen:VtpQwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration":
        "vtp_compile.serving.vllm.qwen:VtpQwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": "vtp_compile.serving.vllm.qwen3:VtpQwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration":
        "vtp_compile.serving.vllm.qwen3_moe:VtpQwen3VLMoeForConditionalGeneration",
    "Gemma3ForConditionalGeneration": "vtp_compile.serving.vllm.gemma3:VtpGemma3ForConditionalGeneration",
    "InternVLForConditionalGeneration":
        "vtp_compile.serving.vllm.internvl:VtpInternVLForConditionalGeneration",
    "Idefics3ForConditionalGeneration":
        "vtp_compile.serving.vllm.idefics3:VtpIdefics3ForConditionalGeneration",
    "SmolVLMForConditionalGeneration":
        "vtp_compile.serving.vllm.idefics3:VtpSmolVLMForConditionalGeneration",
    # vLLM's Transformers backend: the names its class resolution returns for a VLM
    "TransformersMultiModalForCausalLM":
        "vtp_compile.serving.vllm.transformers_backend:TransformersMultiModalForCausalLM",
    "TransformersMultiModalMoEForCausalLM":
        "vtp_compile.serving.vllm.transformers_backend:TransformersMultiModalMoEForCausalLM",
}
# architecture name -> the family name the support table and error messages use
FAMILIES = {
    "LlavaForConditionalGeneration": "LLaVA",
    "LlavaNextForConditionalGeneration": "LLaVA-NeXT",
    "LlavaOnevisionForConditionalGeneration": "LLaVA-OneVision",
    "Qwen2VLForConditionalGeneration": "Qwen2-VL",
    "Qwen2_5_VLForConditionalGeneration": "Qwen2.5-VL",
    "Qwen3VLForConditionalGeneration": "Qwen3-VL",
    "Qwen3VLMoeForConditionalGeneration": "Qwen3-VL-MoE",
    "Gemma3ForConditionalGeneration": "Gemma 3",
    "InternVLForConditionalGeneration": "InternVL",
    "Idefics3ForConditionalGeneration": "Idefics3",
    "SmolVLMForConditionalGeneration": "SmolVLM",
    "TransformersMultiModalForCausalLM": "vLLM's Transformers backend",
    "TransformersMultiModalMoEForCausalLM": "vLLM's Transformers backend (MoE)",
}


def register() -> None:
    global _DONE
    if _DONE:
        return
    _DONE = True
    from .compat import cpu_runner_multimodal_pruning, pixtral_without_torchvision
    pixtral_without_torchvision()
    cpu_runner_multimodal_pruning()
    from vllm import ModelRegistry
    for arch, target in ADAPTERS.items():
        ModelRegistry.register_model(arch, target)
    from .guard import install
    install()
