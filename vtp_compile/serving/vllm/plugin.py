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
}
# architecture name -> the family name the support table and error messages use
FAMILIES = {
    "LlavaForConditionalGeneration": "LLaVA",
    "LlavaNextForConditionalGeneration": "LLaVA-NeXT",
}


def register() -> None:
    global _DONE
    if _DONE:
        return
    _DONE = True
    from .compat import pixtral_without_torchvision
    pixtral_without_torchvision()
    from vllm import ModelRegistry
    for arch, target in ADAPTERS.items():
        ModelRegistry.register_model(arch, target)
    from .guard import install
    install()
