"""The tiny HF-format InternVL (vtp_compile/testing/vllm_internvl.py) and its transformers
reference: :class:`~.support.Tiny` with InternVL's prompt layout.

A prompt writes ``<IMG_CONTEXT>`` once per image; both processors expand it to ``<img>``, one
``<IMG_CONTEXT>`` per feature of all the image's tiles, ``</img>``. The reference writes
``<img><IMG_CONTEXT></img>`` and lets :meth:`~.support.Tiny.reference` expand the one slot to the
kept features, so the markers stay around the cut run as vLLM's placeholder cut keeps them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .support import Tiny

IMAGE = "<IMG_CONTEXT>"


@dataclasses.dataclass
class TinyInternVL(Tiny):
    IMAGE_TEXT = IMAGE

    @classmethod
    def make(cls, path):
        from transformers import AutoProcessor

        from vtp_compile.testing import vllm_internvl, vllm_models
        model, proc = vllm_internvl.build()
        vllm_models.save(model, proc, path, vllm_names=False)
        # the processor vLLM loads (transformers picks the image processor's backend on load)
        return cls(Path(path), model, AutoProcessor.from_pretrained(path))

    def reference(self, prompt, kept_feats, max_tokens):
        """``(prompt ids, greedy tokens)``: :meth:`~.support.Tiny.reference` on InternVL's layout."""
        return super().reference(prompt.replace(IMAGE, f"<img>{IMAGE}</img>"), kept_feats, max_tokens)
