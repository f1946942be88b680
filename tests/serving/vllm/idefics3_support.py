"""The tiny Idefics3 / SmolVLM (vtp_compile/testing/vllm_idefics3.py) and its transformers
reference: :class:`~.support.Tiny` with Idefics3's prompt layout, images not split.

A prompt writes ``<image>`` once per image; with ``do_image_splitting=False`` both processors
expand it to ``<fake_token_around_image><global-img>``, ``image_seq_len`` ``<image>`` slots,
``<fake_token_around_image>``. The reference writes the markers around one ``<image>`` and lets
:meth:`~.support.Tiny.reference` expand it to the kept features, so the markers stay around the
cut run as vLLM's placeholder cut keeps them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .support import Tiny

IMAGE = "<image>"
NO_SPLIT = {"do_image_splitting": False}


@dataclasses.dataclass
class TinyIdefics3(Tiny):
    IMAGE_TEXT = IMAGE

    @classmethod
    def make(cls, path, family: str = "idefics3"):
        from transformers import AutoProcessor

        from vtp_compile.testing import vllm_idefics3, vllm_models
        model, proc = vllm_idefics3.build(family)
        vllm_models.save(model, proc, path, vllm_names=False)
        # the processor vLLM loads (transformers picks the image processor's backend on load)
        return cls(Path(path), model, AutoProcessor.from_pretrained(str(path)))

    def engine(self, **kw):
        return super().engine(mm_processor_kwargs=dict(NO_SPLIT), **kw)

    @property
    def markers(self) -> tuple[int, int]:
        """``(<fake_token_around_image>, <global-img>)`` ids."""
        tok = self.processor.tokenizer
        return tok.convert_tokens_to_ids("<fake_token_around_image>"), tok.convert_tokens_to_ids("<global-img>")

    def hf_inputs(self, prompt, images, video=False):
        return self.processor(images=[images] if images else None, text=[prompt],
                              return_tensors="pt", **NO_SPLIT)

    def language_model(self):
        return self.model.model.text_model

    def reference(self, prompt, kept_feats, max_tokens):
        """``(prompt ids, greedy tokens)``: :meth:`~.support.Tiny.reference` on Idefics3's layout."""
        wrapped = f"<fake_token_around_image><global-img>{IMAGE}<fake_token_around_image>"
        return super().reference(prompt.replace(IMAGE, wrapped), kept_feats, max_tokens)
