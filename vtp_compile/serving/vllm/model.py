"""The model side: compute all ``V`` features of an image, keep ``n_keep`` of them.

:class:`PruningModelMixin` goes before a vLLM multimodal model class. Its ``embed_multimodal``
pops the processor's per-image ``vtp`` field (see :mod:`.processor`); images without it run
exactly as in vLLM. For the others it runs the model's own ``embed_multimodal`` (vision tower
and projector, all ``V`` tokens; with hooks on the tower when the method reads its internals),
then :func:`.selection.select_image` keeps ``n_keep`` features per image in position order. vLLM
writes them into the image's ``n_keep`` placeholders, which hold consecutive positions.

The engine-wide options are validated in ``__init__``, so a bad option or a layer-site method
fails at start-up.

``VTP_VLLM_RECORD=path`` appends one JSON line per pruned image to ``path`` (method, options,
``V``, the kept indices): what the tests compare with the transformers path.

Methods that read frames (``vidcom2``, ``dycoke``, ``fastvid``) and ``per_frame`` get each
item's frames from ``_vtp_temporal`` (Qwen-VL: the clip's M-RoPE temporal positions, :mod:`.mrope`);
families without frames refuse the video methods (``_vtp_check_engine``, the processor's
``_vtp_check``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os

import torch

from . import options, tower
from .processor import decode, field_names, rows
from ...sites import needs_frames
from .selection import select_image

log = logging.getLogger("vtp_compile.serving.vllm")


class PruningModelMixin:
    """Subclasses define ``_vtp_tower()``, ``_vtp_keep_cls()`` and ``_vtp_embed_text(ids)``
    (``_vtp_tower``/``_vtp_keep_cls`` only if they serve methods that read the tower)."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        mm = vllm_config.model_config.multimodal_config
        spec = options.from_mm_kwargs(getattr(mm, "mm_processor_kwargs", None) if mm else None)
        if spec is not None:
            if not self._vtp_frames:
                options.refuse_frames(spec, next(c.__name__ for c in type(self).__mro__
                                                 if c.__module__.startswith("vllm.")))
            self._vtp_check_engine(spec)
            if spec.internals:
                layers, n_full, _ = tower.tower_layers(self._vtp_tower())
                tower.check(spec, len(layers), n_full)
            log.info("vtp: pruning images with %s (%s per image)", spec.to_json(), spec.site.keep)

    def _vtp_check_engine(self, spec) -> None:
        """Raise ``ValueError`` at start-up if this family cannot run ``spec`` (default: fine)."""

    _vtp_modalities: tuple[str, ...] = ("image",)
    _vtp_frames: bool = False   # whether _vtp_temporal knows each item's frames (Qwen-VL)

    def embed_multimodal(self, **kwargs):
        field = text = None
        for mod in self._vtp_modalities:     # vLLM batches one modality per call
            name, text_name = field_names(mod)
            f, t = kwargs.pop(name, None), kwargs.pop(text_name, None)
            if f is not None:
                field, text = f, t
        if field is None:
            return self._vtp_output(super().embed_multimodal(**kwargs), None, kwargs)
        per_image = [decode(r) for r in rows(field)]
        texts = rows(text) if text is not None else [None] * len(per_image)
        internals = next((s for s, _, _ in per_image if s.internals), None)
        cap = tower.Capture(self._vtp_tower(), self._vtp_keep_cls()) if internals else None
        with cap if cap is not None else contextlib.nullcontext():
            feats = super().embed_multimodal(**kwargs)
        feats = list(feats) if not isinstance(feats, torch.Tensor) else list(feats.unbind(0))
        # vLLM's LLaVA-OneVision returns clips of unequal frame counts as [1, V, D] each
        feats = [f[0] if f.dim() == 3 and f.shape[0] == 1 else f for f in feats]
        if len(feats) != len(per_image):
            raise RuntimeError(f"vtp: {len(feats)} images' features for {len(per_image)} vtp fields")
        ctxs = {}
        out, kept_idx = [], []
        for i, ((spec, k, V), f) in enumerate(zip(per_image, feats)):
            if f.shape[0] != V:
                raise RuntimeError(f"vtp: image {i} has {f.shape[0]} features, the processor "
                                   f"counted {V}")
            ctx = None
            if spec.internals:
                key = spec.to_json()
                if key not in ctxs:
                    ctxs[key] = cap.context(spec)
                ctx = ctxs[key][i]
            before = after = None
            if spec.text and texts[i] is not None:
                before, after = self._vtp_text_around(texts[i], f.device, kwargs, i)
            temporal = self._vtp_temporal(kwargs, i) if needs_frames(spec.site) else None
            idx, kept = self._vtp_select(spec, f, ctx=ctx, before=before, after=after, temporal=temporal)
            if kept.shape[0] != k:
                raise RuntimeError(f"vtp: image {i} kept {kept.shape[0]} tokens, expected {k}")
            _record(spec, V, idx)
            out.append(kept)
            kept_idx.append(idx)
        return self._vtp_output(tuple(out), kept_idx, kwargs)

    def _vtp_select(self, spec, feats, **kw):
        """``(kept indices, kept rows)`` of one item's ``[V, D]`` features
        (:func:`.selection.select_image`; Qwen3-VL scores the first ``D`` of wider rows)."""
        return select_image(spec, feats, **kw)

    def _vtp_output(self, feats, kept_idx, kwargs):
        """What ``embed_multimodal`` returns, given the per-item features (kept ones, in position
        order) and each item's kept indices (``None``: no item was pruned). Default: ``feats``;
        M-RoPE families append each token's position (:mod:`.mrope`)."""
        return feats

    def _vtp_temporal(self, kwargs, i: int):
        """Item ``i``'s ``[V]`` temporal positions, whose changes start its frames (default
        None: every item is one frame, as an image is on the transformers path)."""
        return None

    def _vtp_text_around(self, marked: torch.Tensor, device, kwargs=None, i: int = 0):
        """Embeddings of the prompt's text before and after this image's run (``-1``); other
        images' runs (``-2``) are left out. ``kwargs``, ``i``: the batch's inputs and the item."""
        pre, post = text_around(marked)
        return self._vtp_embed_seqs(pre, post, device)

    def _vtp_embed_seqs(self, pre: list[int], post: list[int], device):
        def emb(seq):
            if not seq:
                return None
            return self._vtp_embed_text(torch.tensor(seq, dtype=torch.long, device=device))
        return emb(pre), emb(post)


def text_around(marked: torch.Tensor) -> tuple[list[int], list[int]]:
    """The prompt's token ids before and after the item's slots (``-1``), other items' slots
    (``-2``) left out."""
    ids = marked.tolist()
    first = ids.index(-1)
    last = len(ids) - 1 - ids[::-1].index(-1)
    return [t for t in ids[:first] if t >= 0], [t for t in ids[last + 1:] if t >= 0]


def _record(spec, V: int, idx: torch.Tensor) -> None:
    path = os.environ.get("VTP_VLLM_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"options": dict(spec.options), "visual": V,
                                "kept": idx.tolist()}) + "\n")
