"""Idefics3 and SmolVLM (vLLM's ``Idefics3ForConditionalGeneration`` and
``SmolVLMForConditionalGeneration``): SigLIP tower on tiles, pixel-shuffle connector.

Both classes share vLLM's ``Idefics3MultiModalProcessor`` (SmolVLM only swaps the processing
info for its HF processor's token names), so one processor and one model mixin serve both.

With ``do_image_splitting=False`` an image is one tile: the prompt's ``<image>`` becomes
``<fake_token_around_image><global-img>``, ``image_seq_len`` ``<image>`` slots,
``<fake_token_around_image>`` (vLLM's ``PromptUpdateDetails`` with the ``<image>`` tokens as its
embedding slots). ``V`` is the tile count the processor produced (``num_patches``, 1 here) times
``image_seq_len``; the cut keeps the markers around the ``n_keep`` kept slots, on consecutive
positions, as LLaVA's.

**Refused.** Image splitting (``do_image_splitting``, on by default in the hub checkpoints'
image processors; read from the request's and engine's ``mm_processor_kwargs`` over the image
processor's default, as vLLM's own tile count reads it): each tile's ``<image>`` run is separated
by ``<row_i_col_j>`` text, several runs per image that the plugin does not split a budget among.
``visionzip`` and ``nuwa`` (the connector's pixel shuffle folds 2x2 patches into each token and
the tower has no CLS token); the video methods (no frames: vLLM's classes take images only). vLLM's encoder CUDA graphs
(``cudagraph_mm_encoder``, GPU) are left off for images: that path skips ``embed_multimodal``.
"""
from __future__ import annotations

import dataclasses

from vllm.model_executor.models.idefics3 import (Idefics3DummyInputsBuilder,
                                                 Idefics3ForConditionalGeneration,
                                                 Idefics3MultiModalProcessor,
                                                 Idefics3ProcessingInfo)
from vllm.model_executor.models.smolvlm import (SmolVLMForConditionalGeneration,
                                                SmolVLMProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .model import PruningModelMixin
from .options import refuse_internals
from .processor import PruningProcessorMixin

KEY = "do_image_splitting"


def _refuse_internals(spec) -> None:
    refuse_internals(spec, "Idefics3's connector pixel-shuffles 2x2 patches into each token (no "
                           "CLS token, no token is one patch)", "on Idefics3/SmolVLM")


def _refuse_splitting() -> None:
    from ...errors import OptionError
    raise OptionError("vtp: Idefics3/SmolVLM with image splitting (do_image_splitting=True, the "
                      "image processor's default) give an image one run of <image> tokens per "
                      "tile, which the plugin does not prune; run with mm_processor_kwargs="
                      "{'do_image_splitting': False} (engine-wide or per request) or without "
                      "the 'vtp' option")


def _splitting(kwargs, default) -> bool:
    return bool(kwargs.get(KEY, default))


class _VtpProcessor(PruningProcessorMixin, Idefics3MultiModalProcessor):
    def _vtp_check(self, spec):
        _refuse_internals(spec)

    def _vtp_spec(self, hf_kwargs):
        spec = super()._vtp_spec(hf_kwargs)
        if spec is not None:
            default = self.info.get_hf_processor().image_processor.do_image_splitting
            if _splitting(self.info.ctx.get_merged_mm_kwargs(dict(hf_kwargs)), default):
                _refuse_splitting()
        return spec

    def _vtp_tokens(self, items, item_idx, out):
        from vllm.multimodal.parse import ImageProcessorItems
        if not isinstance(items, ImageProcessorItems):
            return None     # embeddings: run as given
        tiles = int(out["num_patches"][item_idx])
        return tiles * self.info.get_hf_processor().image_seq_len


class VtpIdefics3MultiModalProcessor(_VtpProcessor):
    pass


class VtpSmolVLMMultiModalProcessor(_VtpProcessor):
    pass


class _VtpModel(PruningModelMixin):
    def _vtp_check_engine(self, spec):
        _refuse_internals(spec)
        kwargs = getattr(self.multimodal_config, "mm_processor_kwargs", None) or {}
        if kwargs.get(KEY, True) is False:
            return
        if KEY in kwargs or self._vtp_default_splitting():
            _refuse_splitting()

    def _vtp_default_splitting(self) -> bool:
        """The checkpoint's image processor's ``do_image_splitting`` (what a request without the
        key gets)."""
        from vllm.config import get_current_vllm_config
        from vllm.transformers_utils.processor import cached_image_processor_from_config
        ip = cached_image_processor_from_config(get_current_vllm_config().model_config)
        return bool(getattr(ip, KEY, True))

    def _vtp_embed_text(self, ids):
        return self.model.embed_input_ids(ids)

    def get_encoder_cudagraph_config(self):
        # no modality on vLLM's encoder CUDA-graph path (opt-in, GPU): it calls the tower
        # directly and would skip embed_multimodal, so images would not be pruned
        cfg = Idefics3ForConditionalGeneration.get_encoder_cudagraph_config(self)
        return dataclasses.replace(cfg, modalities=[])


@MULTIMODAL_REGISTRY.register_processor(VtpIdefics3MultiModalProcessor, info=Idefics3ProcessingInfo,
                                        dummy_inputs=Idefics3DummyInputsBuilder)
class VtpIdefics3ForConditionalGeneration(_VtpModel, Idefics3ForConditionalGeneration):
    """vLLM's Idefics3; with ``vtp`` options its ``embed_multimodal`` returns each image's kept
    features (see :class:`~vtp_compile.serving.vllm.model.PruningModelMixin`)."""


@MULTIMODAL_REGISTRY.register_processor(VtpSmolVLMMultiModalProcessor, info=SmolVLMProcessingInfo,
                                        dummy_inputs=Idefics3DummyInputsBuilder)
class VtpSmolVLMForConditionalGeneration(_VtpModel, SmolVLMForConditionalGeneration):
    """vLLM's SmolVLM (Idefics3's model and processor, SmolVLM's HF processor)."""
