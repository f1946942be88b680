"""LLaVA-NeXT (vLLM's ``LlavaNextForConditionalGeneration``): anyres images.

Each image's features are the packed sequence vLLM's and transformers' LLaVA-NeXT splice: the
base tile, the unpadded high-resolution grid and one ``image_newline`` per grid row, ``V`` tokens
in all (vLLM's ``get_num_image_tokens`` for the image's size). The plugin selects ``n_keep`` of
those ``V`` like the transformers path does (the newline tokens are visual tokens there too).
Methods that read the vision tower per patch (``visionzip``, ``nuwa``) are refused: the
projector's packing has no one patch grid per image (as on the transformers path).
"""
from __future__ import annotations

from .compat import pixtral_without_torchvision

pixtral_without_torchvision()   # before vLLM's LLaVA module imports Pixtral's (see .compat)

from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (LlavaNextForConditionalGeneration,
                                                   LlavaNextMultiModalProcessor, LlavaNextProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .model import PruningModelMixin
from .options import refuse_internals
from .processor import PruningProcessorMixin


def _refuse_internals(spec):
    refuse_internals(spec, "the LLaVA-NeXT/OneVision projector packs anyres tiles (no one patch "
                           "grid per image)")


class VtpLlavaNextMultiModalProcessor(PruningProcessorMixin, LlavaNextMultiModalProcessor):
    def _vtp_check(self, spec):
        _refuse_internals(spec)


@MULTIMODAL_REGISTRY.register_processor(VtpLlavaNextMultiModalProcessor, info=LlavaNextProcessingInfo,
                                        dummy_inputs=LlavaDummyInputsBuilder)
class VtpLlavaNextForConditionalGeneration(PruningModelMixin, LlavaNextForConditionalGeneration):
    def _vtp_check_engine(self, spec):
        _refuse_internals(spec)

    def _vtp_keep_cls(self) -> bool:
        return False

    def _vtp_tower(self):
        return self.vision_tower

    def _vtp_embed_text(self, ids):
        return self.language_model.embed_input_ids(ids)
