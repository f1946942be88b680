"""LLaVA-OneVision (vLLM's ``LlavaOnevisionForConditionalGeneration``): anyres images and clips.

Images as for LLaVA-NeXT (:mod:`.llava_next`): each image's ``V`` tokens are the packed sequence
vLLM and transformers splice (base tile, unpadded grid, ``anyres_max_9`` downsampling, newline
tokens), counted by vLLM's ``get_num_image_tokens``; ``visionzip``/``nuwa`` are refused.

Clips: each clip's ``V`` tokens are its frames' pooled patches, frame after frame
(``ceil(g / stride)^2`` per frame, ``g`` = image size / patch size), then one newline token,
``V = frames * per_frame + 1`` (vLLM's ``get_num_video_tokens``); the budget applies per clip.
Unlike the graph, where a clip is one run with one-dimensional positions and the frames come from
the ``frame_tokens`` option, vLLM hands the model each clip's frames, so the video methods and
``per_frame`` see them without the option: token ``j`` is in frame ``j // per_frame`` and the
newline is a frame of its own, exactly what ``frame_tokens = vtp_compile.frame_tokens(model)``
gives on the transformers path. Positions stay consecutive, as for every LLaVA family.
"""
from __future__ import annotations

import math

import torch
from vllm.model_executor.models.llava_onevision import (LlavaOnevisionDummyInputsBuilder,
                                                        LlavaOnevisionForConditionalGeneration,
                                                        LlavaOnevisionMultiModalProcessor,
                                                        LlavaOnevisionProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .llava_next import _refuse_internals
from .model import PruningModelMixin
from .processor import PruningProcessorMixin


class VtpLlavaOnevisionMultiModalProcessor(PruningProcessorMixin, LlavaOnevisionMultiModalProcessor):
    _vtp_modalities = ("image", "video")
    _vtp_frames = True

    def _vtp_tokens(self, items, item_idx, out):
        from vllm.multimodal.parse import VideoProcessorItems
        if isinstance(items, VideoProcessorItems):
            size = items.get_frame_size(item_idx)
            return self.info.get_num_video_tokens(image_width=size.width, image_height=size.height,
                                                  num_frames=items.get_num_frames(item_idx))
        return super()._vtp_tokens(items, item_idx, out)

    def _vtp_check(self, spec):
        _refuse_internals(spec)


@MULTIMODAL_REGISTRY.register_processor(VtpLlavaOnevisionMultiModalProcessor,
                                        info=LlavaOnevisionProcessingInfo,
                                        dummy_inputs=LlavaOnevisionDummyInputsBuilder)
class VtpLlavaOnevisionForConditionalGeneration(PruningModelMixin, LlavaOnevisionForConditionalGeneration):
    _vtp_modalities = ("image", "video")
    _vtp_frames = True

    def _vtp_check_engine(self, spec):
        _refuse_internals(spec)

    def _vtp_embed_text(self, ids):
        return self.language_model.embed_input_ids(ids)

    def _vtp_temporal(self, kwargs, i: int):
        """Clip ``i``'s frame per token (frames of ``per_frame`` pooled tokens, then the newline
        as a frame of its own); an image: None (one frame)."""
        clips = kwargs.get("pixel_values_videos")
        if clips is None:
            return None
        frames = int(clips[i].shape[0])
        cfg = self.config
        grid = cfg.vision_config.image_size // cfg.vision_config.patch_size
        per_frame = math.ceil(grid / getattr(cfg, "spatial_pool_stride", 2)) ** 2
        return torch.arange(frames + 1).repeat_interleave(
            torch.tensor([per_frame] * frames + [1]))
