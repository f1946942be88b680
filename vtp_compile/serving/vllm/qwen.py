"""Qwen2-VL and Qwen2.5-VL (vLLM's ``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``): images and clips, with M-RoPE positions as vLLM's EVS
sets them.

Each image's (clip's) ``V`` tokens are its merged patches (``t * h * w / merge^2`` of its
``image_grid_thw``/``video_grid_thw``), in the (frame-major) raster order the tower emits and
vLLM splices; the budget applies to each image and to each clip. The processor cuts the item's
``<|image_pad|>`` (``<|video_pad|>``) run to ``n_keep``; the model keeps ``n_keep`` features and
appends their positions (:mod:`.mrope`, which says which positions kept tokens get and why). Methods
that read CLIP-style tower internals (``visionzip``, ``nuwa``) are refused: Qwen's tower has no
CLS token and windowed attention. The video methods (``vidcom2``, ``dycoke``, ``fastvid``) and
``per_frame`` see a clip's frames as the transformers path does, from its temporal positions
(``MRopePruningMixin._vtp_temporal``: token ``j`` of a ``(t, h, w)`` grid is in frame
``j // (h * w / merge^2)``); an image is one frame. vtp cannot run beside vLLM's own EVS (``video_pruning_rate``):
both would append positions.
"""
from __future__ import annotations

from vllm.model_executor.models.qwen2_5_vl import (Qwen2_5_VLDummyInputsBuilder,
                                                   Qwen2_5_VLForConditionalGeneration,
                                                   Qwen2_5_VLMultiModalProcessor,
                                                   Qwen2_5_VLProcessingInfo)
from vllm.model_executor.models.qwen2_vl import (Qwen2VLDummyInputsBuilder,
                                                 Qwen2VLForConditionalGeneration,
                                                 Qwen2VLMultiModalProcessor, Qwen2VLProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .model import PruningModelMixin
from .mrope import MRopePruningMixin
from .processor import PruningProcessorMixin

_SERVED = "random, divprune, cdpruner, acgr (site='encoder'), vidcom2, dycoke, fastvid"


def refuse(spec, mm_config, family: str = "Qwen-VL", tower: str = "Qwen's tower"):
    """The Qwen-family refusals: methods that read CLIP-style tower internals, and a ``vtp``
    option beside vLLM's own video pruning (EVS)."""
    from ...errors import OptionError
    if spec.internals:
        raise OptionError(f"vtp: {spec.method} reads CLIP-style vision-tower internals (a CLS "
                          f"token, one attention map per image); {tower} has neither. Methods "
                          f"that run on {family}: {_SERVED}")
    if mm_config is not None and mm_config.video_pruning_rate:
        raise OptionError("vtp: vLLM's own video pruning (video_pruning_rate, EVS) is on; vtp and "
                          f"EVS cannot both prune one {family} engine: unset video_pruning_rate")


class QwenProcessorMixin(PruningProcessorMixin):
    _vtp_modalities = ("image", "video")
    _vtp_frames = True

    def _vtp_tokens(self, items, item_idx, out):
        from vllm.multimodal.parse import ImageProcessorItems, VideoProcessorItems
        if isinstance(items, ImageProcessorItems):
            grid = out["image_grid_thw"][item_idx]
        elif isinstance(items, VideoProcessorItems):
            grid = out["video_grid_thw"][item_idx]
        else:
            return None
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        return int(grid.prod()) // (merge * merge)

    def _vtp_check(self, spec):
        refuse(spec, self.info.ctx.get_mm_config())


class _QwenModelMixin(MRopePruningMixin, PruningModelMixin):
    _vtp_modalities = ("image", "video")
    _vtp_frames = True

    def _vtp_check_engine(self, spec):
        refuse(spec, self.multimodal_config)

    def _vtp_embed_text(self, ids):
        return self.language_model.embed_input_ids(ids)


class VtpQwen2VLMultiModalProcessor(QwenProcessorMixin, Qwen2VLMultiModalProcessor):
    pass


class VtpQwen2_5_VLMultiModalProcessor(QwenProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(VtpQwen2VLMultiModalProcessor, info=Qwen2VLProcessingInfo,
                                        dummy_inputs=Qwen2VLDummyInputsBuilder)
class VtpQwen2VLForConditionalGeneration(_QwenModelMixin, Qwen2VLForConditionalGeneration):
    pass


@MULTIMODAL_REGISTRY.register_processor(VtpQwen2_5_VLMultiModalProcessor, info=Qwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class VtpQwen2_5_VLForConditionalGeneration(_QwenModelMixin, Qwen2_5_VLForConditionalGeneration):
    pass
