"""Gemma 3 (vLLM's ``Gemma3ForConditionalGeneration``): SigLIP tower, average-pooled projector.

An image's replacement is ``\\n\\n<start_of_image>``, ``V`` soft tokens, ``<end_of_image>\\n\\n``
(vLLM's ``PromptUpdateDetails`` with the soft tokens as its embedding slots); ``V`` is the
processor's ``image_seq_length`` (``mm_tokens_per_image``: 256 on the hub checkpoints). The
processor's cut keeps the markers and cuts the soft-token run to ``n_keep``; the kept features
sit on consecutive positions between the markers, as the LLaVA family's do.

**Attention within an image.** vLLM marks Gemma 3 a prefix-LM for images (``is_mm_prefix_lm``):
its runner hands the attention backend each image's embedding range (``extract_embeds_range``,
here the kept soft tokens only, the markers excluded) to attend bidirectionally, as transformers
does from ``token_type_ids``. Backends with ``supports_mm_prefix`` (Triton, FlexAttention,
FlashAttention 4; GPU) do so, over the ``n_keep`` kept tokens. vLLM 0.32's CPU backend
(``CPU_ATTN``, the only one its CPU platform picks) reads no such ranges: on CPU every image,
pruned or not, is attended causally, which is what tests/serving/vllm/test_gemma3.py checks.

**Refused.** Pan-and-scan (``do_pan_and_scan``: the image plus crops, one run each, placeholder
counts that the selection would have to split among runs); ``visionzip`` and ``nuwa`` (the
projector averages patches into each soft token, so no token is one patch; the transformers path
does not prune Gemma 3 with them either); the video methods (no frames: images only).
"""
from __future__ import annotations

from vllm.model_executor.models.gemma3_mm import (Gemma3DummyInputsBuilder,
                                                  Gemma3ForConditionalGeneration,
                                                  Gemma3MultiModalProcessor, Gemma3ProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .model import PruningModelMixin
from .options import refuse_internals
from .processor import PruningProcessorMixin


def _refuse_internals(spec) -> None:
    refuse_internals(spec, "Gemma 3's projector average-pools patches into each soft token (no "
                           "token is one patch)", "on Gemma 3")


def _refuse_pan_and_scan() -> None:
    from ...errors import OptionError
    raise OptionError("vtp: Gemma 3 with pan-and-scan (do_pan_and_scan=True) gives an image one "
                      "run of soft tokens per crop, which the plugin does not prune; run it with "
                      "do_pan_and_scan=False (the processor's default) or without the 'vtp' option")


class VtpGemma3MultiModalProcessor(PruningProcessorMixin, Gemma3MultiModalProcessor):
    def _vtp_check(self, spec):
        _refuse_internals(spec)

    def _vtp_spec(self, hf_kwargs):
        spec = super()._vtp_spec(hf_kwargs)
        if spec is not None and self._vtp_pan_and_scan(hf_kwargs):
            _refuse_pan_and_scan()
        return spec

    def _vtp_pan_and_scan(self, hf_kwargs) -> bool:
        """Whether this request's images are cut into crops (the setting vLLM's
        ``Gemma3ProcessingInfo.get_num_crops`` reads: request and engine kwargs over the
        processor's defaults)."""
        from transformers.models.gemma3.processing_gemma3 import Gemma3ProcessorKwargs
        proc = self.info.get_hf_processor(**hf_kwargs)
        images_kwargs = proc._merge_kwargs(
            Gemma3ProcessorKwargs, tokenizer_init_kwargs=proc.tokenizer.init_kwargs,
            **self.info.ctx.get_merged_mm_kwargs(dict(hf_kwargs)))["images_kwargs"]
        return bool(images_kwargs.get("do_pan_and_scan", proc.image_processor.do_pan_and_scan))

    def _vtp_tokens(self, items, item_idx, out):
        from vllm.multimodal.parse import ImageProcessorItems
        if not isinstance(items, ImageProcessorItems):
            return None
        return self.info.get_hf_processor().image_seq_length


@MULTIMODAL_REGISTRY.register_processor(VtpGemma3MultiModalProcessor, info=Gemma3ProcessingInfo,
                                        dummy_inputs=Gemma3DummyInputsBuilder)
class VtpGemma3ForConditionalGeneration(PruningModelMixin, Gemma3ForConditionalGeneration):
    """vLLM's Gemma 3; with ``vtp`` options its ``embed_multimodal`` returns each image's kept
    soft-token features (see :class:`~vtp_compile.serving.vllm.model.PruningModelMixin`)."""

    def _vtp_check_engine(self, spec):
        _refuse_internals(spec)
        kwargs = getattr(self.multimodal_config, "mm_processor_kwargs", None) or {}
        if kwargs.get("do_pan_and_scan"):
            _refuse_pan_and_scan()

    def _vtp_embed_text(self, ids):
        # Gemma's text embedding scaled by sqrt(hidden), as vLLM's language model embeds text
        return self.language_model.embed_input_ids(ids)
