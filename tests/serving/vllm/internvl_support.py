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

import torch

from .support import Tiny

IMAGE = "<IMG_CONTEXT>"


@dataclasses.dataclass
class TinyInternVL(Tiny):
    @classmethod
    def make(cls, path):
        from transformers import AutoProcessor

        from vtp_compile.testing import vllm_internvl
        model, proc = vllm_internvl.build()
        vllm_internvl.save(model, proc, path)
        # the processor vLLM loads (transformers picks the image processor's backend on load)
        return cls(Path(path), model, AutoProcessor.from_pretrained(path))

    def features(self, image) -> torch.Tensor:
        """``[V, D]``: all tiles' features of one image, read at the language model's input."""
        inputs = self.hf_inputs(IMAGE, [image])
        seen = {}

        def hook(module, args, kwargs):
            seen["x"] = kwargs["inputs_embeds"]
        h = self.model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                self.model(**inputs)
        finally:
            h.remove()
        return seen["x"][0][inputs["input_ids"][0] == self.image_token].float()

    def reference(self, prompt, kept_feats, max_tokens):
        """``(prompt ids, greedy tokens)``: :meth:`~.support.Tiny.reference` on InternVL's layout."""
        return super().reference(prompt.replace(IMAGE, f"<img>{IMAGE}</img>"), kept_feats, max_tokens)
