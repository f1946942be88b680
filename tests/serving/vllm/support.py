"""Shared pieces of the vLLM tests: the tiny model, its engine, and the transformers reference.

**Position semantics.** vLLM gives every prompt token the position of its index in the prompt
as processed, so an image's ``n_keep`` kept features sit on ``n_keep`` consecutive positions and
the text after the image moves up by ``V - n_keep``: the pruned prompt is numbered as if it had
been written with ``n_keep`` image tokens. (vtp's transformers path keeps each kept token's
original position instead; vLLM derives 1-D positions from token counts, so the plugin cannot.)
The reference below does exactly that in transformers: it builds the prompt with ``n_keep``
image tokens, writes the kept features there and decodes greedily with positions ``0..L-1``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch

MAX_LEN = 1024


@dataclasses.dataclass
class Tiny:
    path: Path
    model: object          # the transformers LlavaForConditionalGeneration (fp32)
    processor: object

    @classmethod
    def make(cls, path, builder: str = "build"):
        from vtp_compile.testing import vllm_models
        model, proc = getattr(vllm_models, builder)()
        vllm_models.save(model, proc, path)
        return cls(Path(path), model, proc)

    def engine(self, **kw):
        """An in-process ``vllm.LLM`` of this checkpoint (with ``model_impl="transformers"``,
        vLLM's Transformers backend, built inside :func:`transformers_classes_kept`)."""
        from vllm import LLM
        args = dict(enforce_eager=True, dtype="float32", max_model_len=MAX_LEN,
                    limit_mm_per_prompt={"image": 3}, max_num_seqs=8, seed=0,
                    kv_cache_memory_bytes=64 << 20, distributed_executor_backend="uni",
                    enable_prefix_caching=True, enable_mm_embeds=True)
        args.update(kw)
        backend = args.get("model_impl") == "transformers"
        with transformers_classes_kept() if backend else contextlib.nullcontext():
            return LLM(str(self.path), **args)

    @property
    def image_token(self) -> int:
        return self.model.config.image_token_id

    @property
    def video_token(self) -> int:
        return self.model.config.video_token_id

    IMAGE_TEXT = "<image>"      # what a prompt writes for one image

    def language_model(self):
        """The module that receives the spliced embeddings."""
        return self.model.model.language_model

    def features(self, image, video: bool = False) -> torch.Tensor:
        """``[V, D]``: the features transformers splices for one image (a clip if ``video``;
        read at the language model's input, so LLaVA-NeXT's packing and every tile are
        included)."""
        inputs = self.hf_inputs("<video>" if video else self.IMAGE_TEXT, [image], video)
        seen = {}

        def hook(module, args, kwargs):
            seen["x"] = kwargs["inputs_embeds"]
        h = self.language_model().register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                self.model(**inputs)
        finally:
            h.remove()
        token = self.video_token if video else self.image_token
        return seen["x"][0][inputs["input_ids"][0] == token].float()

    def hf_inputs(self, prompt: str, images: list, video: bool = False):
        if video:
            return self.processor(videos=images, text=[prompt], return_tensors="pt")
        return self.processor(images=images or None, text=[prompt], return_tensors="pt")

    def reference(self, prompt: str, kept_feats: list[torch.Tensor], max_tokens: int,
                  video: bool = False) -> tuple[list[int], list[int]]:
        """``(prompt ids, greedy tokens)``: transformers with each image's (clip's) run cut to
        its kept features (positions 0..L-1, see the module docstring)."""
        tok = self.processor.tokenizer
        ids = tok(prompt)["input_ids"]
        token = self.video_token if video else self.image_token
        out, feats = [], []
        it = iter(kept_feats)
        for t in ids:
            if t == token:
                f = next(it)
                out += [t] * f.shape[0]
                feats.append(f)
            else:
                out.append(t)
        emb_layer = self.model.get_input_embeddings()
        seq = torch.tensor(out)
        with torch.no_grad():
            emb = emb_layer(seq).clone()
            if feats:
                emb[seq == token] = torch.cat(feats).to(emb.dtype)
            gen = []
            for _ in range(max_tokens):
                logits = self.model(inputs_embeds=emb[None]).logits[0, -1]
                nxt = int(logits.argmax())
                gen.append(nxt)
                if nxt == tok.eos_token_id:
                    break
                emb = torch.cat([emb, emb_layer(torch.tensor([nxt]))])
        return out, gen


@contextlib.contextmanager
def transformers_classes_kept():
    """Build an engine on vLLM's Transformers backend without leaving transformers' classes
    changed for the rest of the process.

    The backend decorates the transformers model's decoder class (``LlamaModel`` for the tiny
    LLaVA) with vLLM's ``support_torch_compile``, which rewrites the class itself: a base class,
    ``__init__`` (reads vLLM's current config) and ``__call__`` (reads per-instance attributes set
    by that ``__init__``). Afterwards the reference models of these tests (transformers'
    ``LlavaForConditionalGeneration``, built earlier) fail on the missing attributes, and any
    transformers Llama built later outside a vLLM config fails in ``__init__``. This restores the
    decorated classes once the engine is built. The engine's own modules then run through
    ``nn.Module.__call__``: with ``enforce_eager`` (every engine here) the decorator's ``__call__``
    only forwards to ``forward`` as well, so the engine computes the same."""
    from vllm.compilation import decorators
    decorate = decorators._support_torch_compile
    saved = []

    def recording(cls, *args, **kwargs):
        saved.append((cls, cls.__bases__, dict(vars(cls))))
        return decorate(cls, *args, **kwargs)
    decorators._support_torch_compile = recording
    try:
        yield
    finally:
        decorators._support_torch_compile = decorate
        for cls, bases, attrs in reversed(saved):
            for name in [n for n in vars(cls) if n not in attrs]:
                delattr(cls, name)
            for name, value in attrs.items():
                if vars(cls).get(name) is not value and name not in ("__dict__", "__weakref__"):
                    setattr(cls, name, value)
            cls.__bases__ = bases


def request(prompt, images, vtp=None):
    r = {"prompt": prompt, "multi_modal_data": {"image": images if len(images) != 1 else images[0]}}
    if vtp is not None:
        r["mm_processor_kwargs"] = {"vtp": vtp}
    return r


def greedy(max_tokens=6):
    from vllm import SamplingParams
    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def examples(n, task="attribute"):
    from vtp_compile.scenes import make_dataset
    return make_dataset(task, n=n)


@contextlib.contextmanager
def unadapted(arch: str, module: str):
    """vLLM's own class ``module:arch`` registered for ``arch`` while the block runs, the plugin's
    adapter again after it: a real model class without vtp's mixins, for the guard's tests
    (every family of tiny model built here has an adapter). The plugin is registered first: vLLM
    loads it when the first engine is built, which inside the block would register the adapter
    over vLLM's class again. vLLM caches each checkpoint's model class by its path
    (``model_loader.utils._MODEL_ARCH_BY_HASH``): the cache is emptied on the way in and out, so
    that an engine of a checkpoint built before (or after) gets its own class."""
    from vllm import ModelRegistry
    from vllm.model_executor.model_loader import utils

    from vtp_compile.serving.vllm import register
    from vtp_compile.serving.vllm.plugin import ADAPTERS
    register()
    cache = getattr(utils, "_MODEL_ARCH_BY_HASH", {})
    cache.clear()
    ModelRegistry.register_model(arch, f"vllm.model_executor.models.{module}:{arch}")
    try:
        yield
    finally:
        ModelRegistry.register_model(arch, ADAPTERS[arch])
        cache.clear()
