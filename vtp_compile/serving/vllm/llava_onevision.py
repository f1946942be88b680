"""LLaVA-OneVision (vLLM's ``LlavaOnevisionForConditionalGeneration``): anyres images.

As for LLaVA-NeXT (:mod:`.llava_next`): each image's ``V`` tokens are the packed sequence vLLM
and transformers splice (base tile, unpadded grid, ``anyres_max_9`` downsampling, newline
tokens), counted by vLLM's ``get_num_image_tokens``; ``visionzip``/``nuwa`` are refused. Videos
are not pruned (they run as given).
"""
from __future__ import annotations

from vllm.model_executor.models.llava_onevision import (LlavaOnevisionDummyInputsBuilder,
                                                        LlavaOnevisionForConditionalGeneration,
                                                        LlavaOnevisionMultiModalProcessor,
                                                        LlavaOnevisionProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .llava_next import _refuse_internals
from .model import PruningModelMixin
from .processor import PruningProcessorMixin


class VtpLlavaOnevisionMultiModalProcessor(PruningProcessorMixin, LlavaOnevisionMultiModalProcessor):
    def _vtp_check(self, spec):
        _refuse_internals(spec)


@MULTIMODAL_REGISTRY.register_processor(VtpLlavaOnevisionMultiModalProcessor,
                                        info=LlavaOnevisionProcessingInfo,
                                        dummy_inputs=LlavaOnevisionDummyInputsBuilder)
class VtpLlavaOnevisionForConditionalGeneration(PruningModelMixin, LlavaOnevisionForConditionalGeneration):
    def _vtp_check_engine(self, spec):
        _refuse_internals(spec)

    def _vtp_embed_text(self, ids):
        return self.language_model.embed_input_ids(ids)
