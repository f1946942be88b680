"""A random-weight Qwen2-VL / Qwen2.5-VL checkpoint directory for the lmms-eval video tests.

The model and processor are :mod:`vtp_compile.testing.vllm_qwen`'s (the scene vocabulary plus
Qwen's vision tokens; ``Qwen2VLVideoProcessor`` with 8 px patches merged 2x2, at most
112 x 112 pixels: 49 visual tokens per 2-frame temporal patch), with a chat template that puts
each image or video between ``<|vision_start|>`` and ``<|vision_end|>`` as Qwen's does, so the
wrapper builds its prompts the way it does for a real Qwen checkpoint. Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}{% for c in m.content %}"
    "{% if c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c.type == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %} {{ c.text }}{% endif %}{% endfor %}{% endfor %}")


def save_tiny_qwen(path: Path, family: str = "qwen2_vl") -> Path:
    """``save_pretrained`` of the model and its processor (``AutoModelForImageTextToText`` and
    ``AutoProcessor`` load them back)."""
    from vtp_compile.testing import vllm_qwen
    model, processor = vllm_qwen.build(vllm_qwen.TinyQwen(family=family))
    processor.chat_template = CHAT_TEMPLATE
    return vllm_qwen.save(model, processor, path)
