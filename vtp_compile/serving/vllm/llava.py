"""LLaVA (vLLM's ``LlavaForConditionalGeneration``): the processor and model classes that prune.

Registered over vLLM's own class by :mod:`.plugin`. Without a ``vtp`` entry in
``mm_processor_kwargs`` both behave exactly as vLLM's: the processor adds no field and the model
sees none. Pixtral-HF checkpoints (a LLaVA config with a Pixtral tower) keep vLLM's processor
and are not pruned.
"""
from __future__ import annotations

from .compat import pixtral_without_torchvision

pixtral_without_torchvision()   # before vLLM's LLaVA module imports Pixtral's (see .compat)

import logging  # noqa: E402

from vllm.model_executor.models.llava import (LlavaDummyInputsBuilder, LlavaForConditionalGeneration,
                                              LlavaMultiModalProcessor, LlavaProcessingInfo,
                                              _build_llava_or_pixtral_hf_info,
                                              _build_llava_or_pixtral_hf_processor,
                                              _get_num_hidden_layers)
from vllm.multimodal import MULTIMODAL_REGISTRY

from . import tower
from .model import PruningModelMixin
from .processor import PruningProcessorMixin

log = logging.getLogger("vtp_compile.serving.vllm")


class VtpLlavaMultiModalProcessor(PruningProcessorMixin, LlavaMultiModalProcessor):
    def _vtp_check(self, spec):
        if spec.internals:
            cfg = self.info.get_hf_config()
            tower.check(spec, _get_num_hidden_layers(cfg), cfg.vision_config.num_hidden_layers)


def _build_processor(info, dummy_inputs):
    if isinstance(info, LlavaProcessingInfo):
        return VtpLlavaMultiModalProcessor(info, dummy_inputs)
    return _build_llava_or_pixtral_hf_processor(info, dummy_inputs)


@MULTIMODAL_REGISTRY.register_processor(_build_processor, info=_build_llava_or_pixtral_hf_info,
                                        dummy_inputs=LlavaDummyInputsBuilder)
class VtpLlavaForConditionalGeneration(PruningModelMixin, LlavaForConditionalGeneration):
    """vLLM's LLaVA; with ``vtp`` options its ``embed_multimodal`` returns each image's kept
    features (see :class:`~vtp_compile.serving.vllm.model.PruningModelMixin`)."""

    def _vtp_keep_cls(self) -> bool:
        return self.config.vision_feature_select_strategy == "full"

    def _vtp_tower(self):
        return self.vision_tower

    def _vtp_embed_text(self, ids):
        return self.language_model.embed_input_ids(ids)
