"""Qwen3-VL-MoE (vLLM's ``Qwen3VLMoeForConditionalGeneration``): Qwen3-VL's adapter
(:mod:`.qwen3`) on the MoE class. vLLM's MoE class subclasses the dense one and changes only the
decoder (sparse MoE feed-forward layers) and the processing info's config class; the tower,
deepstack, processor and M-RoPE positions are the dense class's, and so is everything the plugin
does: the selection runs on the tower's output, before the decoder, and the kept tokens' rows go
through the experts as any other token's.

Refused: as on Qwen3-VL (``visionzip``/``nuwa``: no CLS token; a ``vtp`` option beside vLLM's
``video_pruning_rate``).
"""
from __future__ import annotations

from vllm.model_executor.models.qwen3_vl import Qwen3VLDummyInputsBuilder, Qwen3VLMultiModalProcessor
from vllm.model_executor.models.qwen3_vl_moe import (Qwen3VLMoeForConditionalGeneration,
                                                     Qwen3VLMoeProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .qwen3 import Qwen3ProcessorMixin, Qwen3PruningMixin


class VtpQwen3VLMoeMultiModalProcessor(Qwen3ProcessorMixin, Qwen3VLMultiModalProcessor):
    _vtp_family = "Qwen3-VL-MoE"


@MULTIMODAL_REGISTRY.register_processor(VtpQwen3VLMoeMultiModalProcessor, info=Qwen3VLMoeProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class VtpQwen3VLMoeForConditionalGeneration(Qwen3PruningMixin, Qwen3VLMoeForConditionalGeneration):
    _vtp_family = "Qwen3-VL-MoE"
