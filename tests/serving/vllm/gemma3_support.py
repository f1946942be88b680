"""The tiny Gemma 3 of the vLLM tests and its transformers reference.

The prompt writes an image as ``<start_of_image>``; the processor replaces it with
``\\n\\n<start_of_image>``, ``V`` soft tokens, ``<end_of_image>\\n\\n``. The reference cuts each
image's soft-token run to its kept features, keeps the markers, numbers the tokens ``0..L-1``
(vLLM's 1-D positions, see support.py) and decodes greedily with the attention vLLM's CPU
backend uses: causal everywhere (``bidirectional=False``). ``bidirectional=True`` gives the kept
soft tokens of each image ``token_type_ids`` 1, so transformers lets them attend to each other
(what Gemma 3 does and vLLM's GPU backends do over the kept run): the tests use it to show that
vLLM's CPU output is not that.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .support import Tiny

IMAGE = "<start_of_image>"


@dataclasses.dataclass
class TinyGemma3(Tiny):

    @classmethod
    def make(cls, path, builder: str = "build_gemma3"):
        """Build, save, and reload the processor from ``path``: vLLM loads transformers'
        torchvision image processor from there, whose resize differs from the PIL one's by up to
        1/128 per pixel."""
        from transformers import AutoProcessor

        from vtp_compile.testing import vllm_models
        model, proc = getattr(vllm_models, builder)()
        vllm_models.save(model, proc, path)
        return cls(Path(path), model, AutoProcessor.from_pretrained(str(path)))

    @property
    def image_token(self) -> int:
        """The soft token (the embedding slots); ``<start_of_image>`` is a marker."""
        return self.model.config.image_token_id

    @property
    def visual_tokens(self) -> int:
        return self.processor.image_seq_length

    def features(self, image) -> torch.Tensor:
        """``[V, D]``: the soft-token features transformers splices for one image."""
        inputs = self.hf_inputs(IMAGE, [image])
        with torch.no_grad():
            out = self.model.model.get_image_features(inputs["pixel_values"], return_dict=True)
        return out.pooler_output[0].float()

    def prompt_ids(self, prompt: str, kept: list[int]) -> list[int]:
        """The processor's ids for ``prompt`` with image ``i``'s soft-token run cut to
        ``kept[i]`` tokens (the images' pixels do not change the ids without pan-and-scan, so
        blank ones stand in)."""
        from PIL import Image
        n = prompt.count(IMAGE)
        full = self.processor(text=[prompt], images=[[Image.new("RGB", (8, 8))] * n] if n else None,
                              return_tensors="pt")["input_ids"][0].tolist()
        ids, it = [], iter(kept)
        for i, t in enumerate(full):
            if t != self.image_token:
                ids.append(t)
            elif i == 0 or full[i - 1] != self.image_token:       # a run starts
                ids += [t] * next(it)
        return ids

    def reference(self, prompt: str, kept_feats: list[torch.Tensor], max_tokens: int,
                  bidirectional: bool = False) -> tuple[list[int], list[int]]:
        """``(prompt ids, greedy tokens)``: transformers on :meth:`prompt_ids` with each image's
        kept features in its soft-token slots."""
        ids = self.prompt_ids(prompt, [f.shape[0] for f in kept_feats])
        feats = list(kept_feats)
        seq = torch.tensor(ids)
        soft = seq == self.image_token
        emb_layer = self.model.get_input_embeddings()
        eos = self.processor.tokenizer.eos_token_id
        with torch.no_grad():
            emb = emb_layer(seq).clone()
            if feats:
                emb[soft] = torch.cat(feats).to(emb.dtype)
            types = soft.long()
            gen = []
            for _ in range(max_tokens):
                extra = {"token_type_ids": types[None]} if bidirectional else {}
                nxt = int(self.model(inputs_embeds=emb[None], **extra).logits[0, -1].argmax())
                gen.append(nxt)
                if nxt == eos:
                    break
                emb = torch.cat([emb, emb_layer(torch.tensor([nxt]))])
                types = torch.cat([types, types.new_zeros(1)])
        return ids, gen
