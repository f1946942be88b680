"""Qwen3-VL (vLLM's ``Qwen3VLForConditionalGeneration``): images and clips, with the M-RoPE
positions the kept tokens have on the transformers path. Qwen3-VL-MoE (:mod:`.qwen3_moe`) shares
the mixins here: the same tower, processor, deepstack and positions; only the decoder's
feed-forward layers differ, which pruning does not touch.

**Items.** An image's ``V`` tokens are its merged patches (``h * w / merge^2`` of its
``image_grid_thw``) in the raster order the tower emits; a clip's are its temporal patches'
(``t * h * w / merge^2``, frame-major), token ``j`` in frame ``j // (h * w / merge^2)``. The budget
applies to each image and each clip. An image's ``<|image_pad|>`` run is cut to ``n_keep`` as on
Qwen2.5-VL; a clip is one run per frame after its timestamp text, and how many tokens each frame
keeps is known only after the selection, so a pruned clip's placeholder is all embedding slots
and the model writes its real layout there (:mod:`.qwen3_positions`).

**Deepstack.** vLLM's tower returns each token's main feature (``D`` columns, what the decoder
reads at layer 0) followed by one ``D``-column feature per deepstack level (added to the hidden
state after decoder layers ``0 .. levels - 1``). The method scores the first ``D`` columns — the
features transformers splices, so the kept indices are the transformers path's — and the kept
rows keep all their columns: a kept token gets its own deepstack features, a dropped token's are
gone (on the transformers path too: the selection runs at the splice, before any injection).
Merging methods (ACGR, FastVID) merge the main columns only; the deepstack columns stay the kept
token's. A pruned clip's text rows (timestamps, markers) carry no deepstack features.

**Positions**: :mod:`.qwen3_positions`.

**The prompt around a clip** (``cdpruner``, ``acgr``): on the transformers path a clip's row has
its timestamps and markers between the frames; CDPruner reads the text after the first visual
token (as a set: the mean relevance), DCP-Prune's encoder site the last prompt token. The text
before the clip is the prompt's before its placeholder plus the first timestamp and
``<|vision_start|>``; the text after is every other timestamp and marker of the clip and the
prompt after the placeholder (:meth:`VtpQwen3VLForConditionalGeneration._vtp_text_around`).

Refused: ``visionzip``/``nuwa`` (no CLS token) and a ``vtp`` option beside vLLM's own video
pruning (``video_pruning_rate``).
"""
from __future__ import annotations

import dataclasses
import functools

import torch
from vllm.model_executor.models.qwen3_vl import (Qwen3VLDummyInputsBuilder,
                                                 Qwen3VLForConditionalGeneration,
                                                 Qwen3VLMultiModalProcessor, Qwen3VLProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .model import PruningModelMixin, text_around
from .mrope import MRopePruningMixin
from .processor import kept_counts
from .qwen import QwenProcessorMixin, refuse
from .qwen3_positions import (Qwen3PositionsMixin, clip_ids, clip_layout, encode, frames, run_rows,
                              timestamps_of)
from .selection import select_image


def _refuse(spec, mm_config, family: str):
    refuse(spec, mm_config, family, "Qwen3-VL's tower")


class Qwen3ProcessorMixin(QwenProcessorMixin):
    """Before vLLM's ``Qwen3VLMultiModalProcessor``: Qwen3-VL's and Qwen3-VL-MoE's processor
    (items and their token counts as on Qwen2-VL / Qwen2.5-VL, :mod:`.qwen`)."""
    _vtp_family = "Qwen3-VL"

    def _vtp_check(self, spec):
        _refuse(spec, self.info.ctx.get_mm_config(), self._vtp_family)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        kept = kept_counts(out_mm_kwargs, "video")
        if not kept:
            return updates
        return [dataclasses.replace(u, replacement=functools.partial(
                    self._vtp_clip_placeholder, out_mm_kwargs, kept, u.replacement))
                if u.modality == "video" else u for u in updates]

    def _vtp_clip_placeholder(self, out_mm_kwargs, kept, replacement, item_idx):
        """A pruned clip's placeholder: all ``n_keep`` ``<|video_pad|>`` after the first
        timestamp, the other frames' timestamps and markers after them, every token an embedding
        slot (the model writes the real layout into them; :mod:`.qwen3_positions`)."""
        from vllm.multimodal.processing import PromptUpdateDetails
        if item_idx not in kept:
            return replacement(item_idx)
        item = out_mm_kwargs["video"][item_idx]
        t = int(item["video_grid_thw"].data[0])
        ts = item["timestamps"].data
        ts = [float(x) for x in (ts.tolist() if isinstance(ts, torch.Tensor) else ts)]
        ids = clip_ids([kept[item_idx]] + [0] * (t - 1), ts, self.info.get_tokenizer(),
                       self.info.get_hf_config())
        return PromptUpdateDetails.from_seq(ids)


class Qwen3PruningMixin(Qwen3PositionsMixin, MRopePruningMixin, PruningModelMixin):
    """Before vLLM's ``Qwen3VLForConditionalGeneration`` (or its MoE subclass): Qwen3-VL's and
    Qwen3-VL-MoE's model."""
    _vtp_family = "Qwen3-VL"
    _vtp_modalities = ("image", "video")
    _vtp_frames = True

    def _vtp_check_engine(self, spec):
        _refuse(spec, self.multimodal_config, self._vtp_family)

    def _vtp_embed_text(self, ids):
        return self.language_model.embed_input_ids(ids)

    def _vtp_text_around(self, marked, device, kwargs=None, i: int = 0):
        if kwargs is None or kwargs.get("video_grid_thw") is None:
            return super()._vtp_text_around(marked, device, kwargs, i)
        _, grid = self._vtp_grid(kwargs, i)
        pre, post = text_around(marked)          # a pruned clip: its whole placeholder is marked
        cfg = self.config
        merge = cfg.vision_config.spatial_merge_size
        t, h, w = (int(x) for x in grid)
        layout = clip_ids([h * w // (merge * merge)] * t, timestamps_of(kwargs["timestamps"], i),
                          self._tokenizer, cfg)
        first = layout.index(cfg.video_token_id)
        between = [x for x in layout[first:] if x != cfg.video_token_id]
        return self._vtp_embed_seqs(pre + layout[:first], between + post, device)

    def _vtp_select(self, spec, feats, **kw):
        D = self.visual_dim
        idx, kept = select_image(spec, feats[:, :D], **kw)
        return idx, torch.cat([kept, feats[idx.to(feats.device), D:]], 1)

    def _vtp_grid(self, kwargs, i: int):
        modality = "video" if kwargs.get("video_grid_thw") is not None else "image"
        grids = kwargs[f"{modality}_grid_thw"]
        grids = grids if not isinstance(grids, torch.Tensor) or grids.dim() == 2 else grids[None]
        return modality, grids[i]

    def _vtp_temporal(self, kwargs, i: int):
        _, grid = self._vtp_grid(kwargs, i)
        return frames(grid, self.config.vision_config.spatial_merge_size)

    def _vtp_output(self, feats, kept_idx, kwargs):
        if self._vtp_evs:        # vLLM's EVS (video_pruning_rate) appended its own channels
            return feats
        feats = list(feats) if not isinstance(feats, torch.Tensor) else list(feats.unbind(0))
        merge = self.config.vision_config.spatial_merge_size
        out = []
        for i, f in enumerate(feats):
            modality, grid = self._vtp_grid(kwargs, i)
            idx = None if kept_idx is None else kept_idx[i].cpu()
            if modality == "video" and idx is not None:
                out.append(self._vtp_clip_rows(f, idx, grid, timestamps_of(kwargs["timestamps"], i)))
                continue
            rows = run_rows(grid, merge)
            rows = rows if idx is None else rows[idx]
            if rows.shape[0] != f.shape[0]:
                raise RuntimeError(f"vtp: {modality} {i} has {f.shape[0]} embeddings for "
                                   f"{rows.shape[0]} positions")
            out.append(torch.cat([f, encode(rows, f.dtype).to(f.device)], 1))
        return tuple(out)

    def _vtp_clip_rows(self, kept_feats, idx, grid, timestamps):
        """A pruned clip's placeholder rows in its real layout: per frame the timestamp's and the
        markers' text embeddings (no deepstack features) and the frame's kept rows."""
        cfg = self.config
        merge = cfg.vision_config.spatial_merge_size
        counts = torch.bincount(frames(grid, merge)[idx], minlength=int(grid[0])).tolist()
        ids = clip_ids(counts, timestamps, self._tokenizer, cfg)
        dev = kept_feats.device
        tok = torch.tensor(ids, device=dev)
        rows = kept_feats.new_zeros(len(ids), kept_feats.shape[1])
        rows[:, :self.visual_dim] = self.language_model.embed_input_ids(tok).to(rows.dtype)
        rows[tok == cfg.video_token_id] = kept_feats
        layout = clip_layout(ids, idx, grid, merge, cfg)
        return torch.cat([rows, encode(layout, rows.dtype).to(dev)], 1)


class VtpQwen3VLMultiModalProcessor(Qwen3ProcessorMixin, Qwen3VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(VtpQwen3VLMultiModalProcessor, info=Qwen3VLProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class VtpQwen3VLForConditionalGeneration(Qwen3PruningMixin, Qwen3VLForConditionalGeneration):
    pass
