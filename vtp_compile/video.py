"""Frames for users: :func:`frame_tokens`, the ``frame_tokens`` option of the families whose clip
reaches the language model as one run of tokens with one-dimensional positions, and
:func:`with_frame_tokens`, which the backend uses to fill that option in from the compiled
model's config when it is not given."""
from __future__ import annotations

import dataclasses
import logging
import math

log = logging.getLogger("vtp_compile")


def frame_tokens(model) -> int | None:
    """Tokens per frame of ``model``'s clips where vtp cannot see frame boundaries in the graph
    (pass it as the ``frame_tokens`` option), read from its config; None where the graph shows
    them (Qwen-style M-RoPE positions, or text between frames) or the model takes no video.

    * LLaVA-OneVision: each frame's patch grid is pooled bilinearly to ``ceil(g / 2)`` a side
      (``g`` = image size / patch size); one newline token follows the whole clip, so with this
      value the newline is a frame of its own (one token);
    * LLaVA-NeXT-Video: average-pooled by ``spatial_pool_stride``: ``(g // stride)`` a side.
    """
    cfg = getattr(model, "config", model)
    kind = getattr(cfg, "model_type", "")
    vc = getattr(cfg, "vision_config", None)
    if vc is None or kind not in ("llava_onevision", "llava_next_video"):
        return None
    grid = vc.image_size // vc.patch_size
    if kind == "llava_onevision":
        return math.ceil(grid / 2) ** 2
    return (grid // cfg.spatial_pool_stride) ** 2


def with_frame_tokens(cfg, config):
    """``cfg`` with ``frame_tokens`` read from ``config`` (the compiled model's, or None) where a
    method reads frames, the option was not given, and the family needs it; else ``cfg``."""
    frames = cfg.keep.frames
    if frames is None or frames.frame_tokens or config is None:
        return cfg
    tokens = frame_tokens(config)
    if tokens is None:
        return cfg
    log.info("vtp: frame_tokens=%d read from the model's config (%s: a clip is one run of "
             "tokens; pass 'frame_tokens' to override)", tokens, config.model_type)
    keep = dataclasses.replace(cfg.keep, frames=dataclasses.replace(frames, frame_tokens=tokens))
    return dataclasses.replace(cfg, keep=keep)
