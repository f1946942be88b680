"""InternVL, HF format (``InternVLForConditionalGeneration``, which vLLM 0.32 runs with its
``InternS1ForConditionalGeneration`` class): dynamic tiles, pixel shuffle.

An image is cut into tiles (a grid of up to ``max_patches`` tiles plus a thumbnail tile when
there is more than one); each tile gives ``image_seq_length`` features (InternViT, CLS dropped,
pixel shuffle 0.5, projector). vLLM replaces the prompt's ``<IMG_CONTEXT>`` with ``<img>``, one
``<IMG_CONTEXT>`` per feature of all tiles, ``</img>``, and splices the features tile by tile, as
transformers does: an image's ``V`` visual tokens are all its tiles' features,
``V = tiles * image_seq_length``, counted from the tile count the processor produced (its
``image_num_patches``, what vLLM's own replacement uses). The cut keeps ``<img>``/``</img>``
around the ``n_keep`` kept slots (:func:`.processor.cut_run`); positions are consecutive, as
LLaVA's.

Refused, as on the transformers path (``attach`` refuses InternViT): ``visionzip`` and ``nuwa``
(they read the tower per patch; InternViT runs tile by tile and pixel shuffle folds 2x2 patches
into one token, so no one patch grid or CLS attention belongs to an image's tokens) and the video
methods (no frames). Videos (``Frame{i}: <img>`` + one tile's tokens + ``</img>`` per frame) run
unpruned.
"""
from __future__ import annotations

from vllm.model_executor.models.interns1 import (InternS1DummyInputsBuilder,
                                                 InternS1ForConditionalGeneration,
                                                 InternS1MultiModalProcessor,
                                                 InternS1ProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .model import PruningModelMixin
from .options import refuse_internals
from .processor import PruningProcessorMixin


def _refuse_internals(spec):
    refuse_internals(spec, "InternVL's tower runs tile by tile with pixel shuffle (2x2 patches per "
                           "token; no one patch grid per image)")


class VtpInternVLMultiModalProcessor(PruningProcessorMixin, InternS1MultiModalProcessor):
    def _vtp_check(self, spec):
        _refuse_internals(spec)

    def _vtp_tokens(self, items, item_idx, out):
        from vllm.multimodal.parse import ImageProcessorItems
        if not isinstance(items, ImageProcessorItems):
            return None     # embeddings: run as given
        tiles = int(out["image_num_patches"][item_idx])
        return tiles * self.info.get_hf_processor().image_seq_length


@MULTIMODAL_REGISTRY.register_processor(VtpInternVLMultiModalProcessor, info=InternS1ProcessingInfo,
                                        dummy_inputs=InternS1DummyInputsBuilder)
class VtpInternVLForConditionalGeneration(PruningModelMixin, InternS1ForConditionalGeneration):
    """vLLM's InternS1/InternVL class; with ``vtp`` options its ``embed_multimodal`` returns each
    image's kept features (see :class:`~vtp_compile.serving.vllm.model.PruningModelMixin`)."""

    def _vtp_check_engine(self, spec):
        _refuse_internals(spec)

    def _vtp_embed_text(self, ids):
        return self.language_model.embed_input_ids(ids)
