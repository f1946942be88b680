"""Qwen3-VL (vLLM's ``Qwen3VLForConditionalGeneration``): images, with M-RoPE positions of the
kept tokens as on the transformers path; clips are refused.

**Images.** An image's ``V`` tokens are its merged patches (``h * w / merge^2`` of its
``image_grid_thw``), in the raster order the tower emits; the budget applies to each image. The
processor cuts the image's ``<|image_pad|>`` run to ``n_keep``, as on Qwen2.5-VL.

**Deepstack.** vLLM's tower returns each token's main feature (``D`` columns, what the decoder
reads at layer 0) followed by one ``D``-column feature per deepstack level (added to the hidden
state after decoder layers ``0 .. levels - 1``). The method scores the first ``D`` columns — the
features transformers splices, so the kept indices are the transformers path's — and the kept
rows keep all their columns: a kept token gets its own deepstack features, a dropped token's are
gone (on the transformers path too: the selection runs at the splice, before any injection).
Merging methods (ACGR) merge the main columns only; the deepstack columns stay the kept token's.

**Positions** (:class:`MRopePositionsMixin`): each kept token keeps the ``(t, h, w)`` it has in the
unpruned prompt and all text keeps its unpruned position, as on Qwen2.5-VL (:mod:`.mrope`). vLLM's
own Qwen3-VL recompute (``evs.recompute_mrope_positions`` with 5 channels) would restart the text
after an image at one past the *kept* tokens' largest position, so the text's positions would
depend on the selection; the adapter writes its own recompute instead.

**Clips** are refused: a Qwen3-VL clip is a run per frame with timestamp text between the runs
(``<0.5 seconds><|vision_start|><|video_pad|>...<|vision_end|>`` per temporal patch), so how many
placeholders each frame keeps would have to be fixed by the processor before the method (which
picks tokens across frames) has run. Methods that read frames (``vidcom2``, ``dycoke``,
``fastvid``) and the vision-internals ones (``visionzip``, ``nuwa``: no CLS token) are refused;
so is a ``vtp`` option beside vLLM's own video pruning (``video_pruning_rate``).
"""
from __future__ import annotations

import torch
from vllm.model_executor.models.qwen3_vl import (Qwen3VLDummyInputsBuilder,
                                                 Qwen3VLForConditionalGeneration,
                                                 Qwen3VLMultiModalProcessor, Qwen3VLProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .model import PruningModelMixin
from .mrope import MRopePruningMixin
from .processor import PruningProcessorMixin
from .selection import select_image

_SERVED = "random, divprune, cdpruner, acgr (site='encoder'); images only"
_CHANNELS = 3      # (t, h, w) of each token, relative to the start of its run


def _refuse(spec, mm_config):
    from ...errors import OptionError
    if spec.internals:
        raise OptionError(f"vtp: {spec.method} reads CLIP-style vision-tower internals (a CLS "
                          f"token, one attention map per image); Qwen3-VL's tower has neither. "
                          f"Methods that run on Qwen3-VL: {_SERVED}")
    if mm_config is not None and mm_config.video_pruning_rate:
        raise OptionError("vtp: vLLM's own video pruning (video_pruning_rate, EVS) is on; vtp and "
                          "EVS cannot both prune one Qwen3-VL engine: unset video_pruning_rate")


def clips_refused():
    from ...errors import OptionError
    return OptionError(
        "vtp: Qwen3-VL clips cannot be pruned by the vtp plugin: each frame is its own "
        "<|video_pad|> run after its timestamp text, and how many tokens each frame keeps is known "
        "only after the method has run. Send clips without the 'vtp' option (they run unpruned; "
        "vLLM's own video_pruning_rate prunes them) or prune images only. "
        f"Methods that run on Qwen3-VL: {_SERVED}")


class VtpQwen3VLMultiModalProcessor(PruningProcessorMixin, Qwen3VLMultiModalProcessor):
    _vtp_modalities = ("image",)

    def _vtp_tokens(self, items, item_idx, out):
        from vllm.multimodal.parse import ImageProcessorItems
        if not isinstance(items, ImageProcessorItems):
            return None
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        return int(out["image_grid_thw"][item_idx].prod()) // (merge * merge)

    def _vtp_check(self, spec):
        _refuse(spec, self.info.ctx.get_mm_config())

    def apply(self, inputs, timing_ctx):
        items = inputs.mm_data_items
        if "video" in items and len(items["video"]) and \
                self._vtp_spec(inputs.hf_processor_mm_kwargs) is not None:
            raise clips_refused()
        return super().apply(inputs, timing_ctx)


def run_positions(grid_thw, merge: int) -> torch.Tensor:
    """``[t*h*w/merge^2, 3]`` int64: each token's ``(t, h, w)`` relative to the start of its run.
    Qwen3-VL numbers every temporal patch as its own run (``t`` is 0; a clip's frames are runs
    after their timestamps), the token after ``<|vision_start|>`` at ``(0, 0, 0)``."""
    t, h, w = (int(x) for x in grid_thw)
    rows, cols = h // merge, w // merge
    r = torch.arange(rows).repeat_interleave(cols).repeat(t)
    c = torch.arange(cols).repeat(rows * t)
    return torch.stack([torch.zeros_like(r), r, c], 1)


class MRopePositionsMixin(MRopePruningMixin):
    """Qwen3-VL's positions through vLLM's multimodal-pruning path (:mod:`.mrope`), with its own
    recompute: ``embed_multimodal`` appends each token's :func:`run_positions` row (kept tokens
    only for a pruned image), and :meth:`recompute_mrope_positions` writes ``row + p + 1`` for each
    embedding slot, ``p`` the position of the ``<|vision_start|>`` before the slot's run. Text
    positions are final when the request starts (:meth:`get_mrope_input_positions` of
    :class:`~.mrope.MRopePruningMixin`: vLLM's, on the prompt with each pruned run widened back
    to ``V``, the extra columns removed) and are not touched."""

    def _vtp_item_positions(self, kwargs, i: int) -> torch.Tensor:
        modality = "video" if kwargs.get("video_grid_thw") is not None else "image"
        grids = kwargs[f"{modality}_grid_thw"]
        grids = grids if not isinstance(grids, torch.Tensor) or grids.dim() == 2 else grids[None]
        pos = run_positions(grids[i], self.config.vision_config.spatial_merge_size)
        # the rows travel in the embeddings' dtype: integers are exact up to 256 (bf16), 2048 (fp16)
        exact = {torch.bfloat16: 256, torch.float16: 2048}.get(self.model_config.dtype)
        if exact is not None and int(pos.max()) > exact:
            raise RuntimeError(f"vtp: a {modality} of {int(pos.max()) + 1} merged patches a side; "
                               f"its positions are not exact in {self.model_config.dtype}")
        return pos

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions,
                                  num_computed_tokens):
        if self._vtp_evs:       # vLLM's EVS (video_pruning_rate): its own channels and recompute
            return Qwen3VLForConditionalGeneration.recompute_mrope_positions(
                self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens)
        embeds = [e[:, :-_CHANNELS] for e in multimodal_embeddings]
        positions = mrope_positions.clone()
        rel = [e[:, -_CHANNELS:] for e in multimodal_embeddings if e.shape[0]]
        if rel:
            dev = positions.device
            rel = torch.cat(rel).to(device=dev).round().long()
            ids = torch.as_tensor(input_ids, device=dev).long()
            cfg = self.config
            slots = ((ids == cfg.image_token_id) | (ids == cfg.video_token_id)).nonzero().flatten()
            slots = slots[slots >= num_computed_tokens][:rel.shape[0]]
            starts = (ids == cfg.vision_start_token_id).nonzero().flatten()
            if slots.numel() != rel.shape[0] or not starts.numel() or starts[0] > slots[0]:
                raise RuntimeError(f"vtp: {rel.shape[0]} multimodal embeddings for "
                                   f"{slots.numel()} placeholder slots after token {num_computed_tokens}")
            start = starts[torch.searchsorted(starts, slots) - 1]
            positions[:, slots] = (rel + positions[0, start][:, None] + 1).T.to(positions.dtype)
        delta = int(positions.max()) + 1 - positions.shape[1] if positions.numel() else 0
        return embeds, positions, delta


@MULTIMODAL_REGISTRY.register_processor(VtpQwen3VLMultiModalProcessor, info=Qwen3VLProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class VtpQwen3VLForConditionalGeneration(MRopePositionsMixin, PruningModelMixin,
                                         Qwen3VLForConditionalGeneration):
    _vtp_modalities = ("image",)

    def _vtp_check_engine(self, spec):
        _refuse(spec, self.multimodal_config)

    def _vtp_embed_text(self, ids):
        return self.language_model.embed_input_ids(ids)

    def _vtp_select(self, spec, feats, **kw):
        D = self.visual_dim
        idx, kept = select_image(spec, feats[:, :D], **kw)
        return idx, torch.cat([kept, feats[idx.to(feats.device), D:]], 1)
