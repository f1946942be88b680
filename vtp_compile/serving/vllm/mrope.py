"""M-RoPE positions of the kept tokens (Qwen2-VL, Qwen2.5-VL; Qwen3-VL with its own recompute,
:mod:`.qwen3`), through vLLM's EVS path.

vLLM numbers a Qwen prompt's tokens with M-RoPE: an image's (or clip's) tokens get ``(t, h, w)``
positions on their merged patch grid, offset by the position after ``<|vision_start|>``, and the
text after the image continues at one past the grid's largest position. vLLM computes them when
a request arrives (``get_mrope_input_positions``), from the prompt and each item's grid, before
the vision tower runs; which tokens a method keeps is known only after it. vLLM's own pruning of
Qwen videos (EVS) has the same problem and solves it in two steps, which the plugin reuses:

1. ``embed_multimodal`` appends 4 channels to each item's embeddings: every kept token's
   ``(t, h, w)`` on the item's unpruned grid (vLLM's ``evs.compute_mrope_for_media``) and the
   amount by which the text after the item moves on;
2. the model runner, which the model tells it prunes (vLLM's ``SupportsMultiModalPruning`` and
   the multimodal config's ``is_multimodal_pruning_enabled()``), hands those to the model's
   ``recompute_mrope_positions`` (vLLM's, Qwen2.5-VL's, over ``evs.recompute_mrope_positions``)
   before the embeddings are merged; it strips the channels and rewrites the request's positions.

**Positions of a pruned item:** each kept token keeps the ``(t, h, w)`` position it has in the
unpruned prompt, and the text after the item keeps its unpruned positions too (the 4th channel
is one past the grid's largest position, where vLLM's text after an unpruned item starts; EVS
puts the grid width there, which is the same for square images and differs for tall ones). So a
pruned prompt's positions are the unpruned prompt's with the dropped tokens' columns removed:
the transformers path's semantics too (kept tokens keep their positions).

:meth:`MRopePruningMixin.get_mrope_input_positions` computes the positions a request starts with
by running vLLM's own function on the prompt with each pruned run widened back to ``V`` tokens,
then removing the extra columns: text positions are final there (a prefix-cache hit that skips
the image needs no recompute), the pruned run's are provisional until step 2.

Every item gets the channels once the adapter is loaded (unpruned items: the whole grid, which
recomputes the positions vLLM started with), because the runner strips them from every item.
vLLM 0.32's CPU runner never reads the flag (``CPUModelRunner.load_model`` leaves out the lines
of ``GPUModelRunner.load_model`` that set it): :func:`.compat.cpu_runner_multimodal_pruning`.
"""
from __future__ import annotations

import dataclasses

import torch

from .processor import field_names


def item_positions(grid_thw, merge: int, t_factor: float = 1.0) -> torch.Tensor:
    """``[t*h*w/merge^2, 4]`` int64: ``(t, h, w)`` of every token of an item with patch grid
    ``grid_thw`` (vLLM's ``compute_mrope_for_media``; ``t`` scaled by ``t_factor``, as vLLM's
    ``iter_mm_grid_thw`` does for videos), and the 4th channel: one past the largest."""
    from vllm.multimodal.video_prune.evs import compute_mrope_for_media
    pos = compute_mrope_for_media([int(x) for x in grid_thw], merge, tokens_per_second=t_factor)
    pos[:, 3] = pos[:, :3].max() + 1
    return pos


def turn_on(vllm_config) -> None:
    """Make the engine's multimodal config report pruning on (without setting
    ``video_pruning_rate``, so vLLM's own EVS stays off): the runner then calls
    ``recompute_mrope_positions``."""
    mm = vllm_config.model_config.multimodal_config
    if mm is not None and not mm.is_multimodal_pruning_enabled():
        object.__setattr__(mm, "is_multimodal_pruning_enabled", lambda: True)


def _vllm_base(cls):
    return next(c for c in cls.__mro__ if c.__module__.startswith("vllm."))


def _native_pruning(cls) -> bool:
    """Whether vLLM's own class (not this mixin) prunes (EVS) and appends positions itself."""
    return bool(getattr(_vllm_base(cls), "supports_multimodal_pruning", False))


class MRopePruningMixin:
    """Before :class:`~.model.PruningModelMixin` and a vLLM Qwen-VL class. Subclasses set
    ``_vtp_grid_key = {"image": "image_grid_thw", ...}`` (modalities they prune)."""

    supports_multimodal_pruning = True

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._vtp_evs = bool(vllm_config.model_config.multimodal_config.is_multimodal_pruning_enabled())
        if self._vtp_evs and not _native_pruning(type(self)):
            from ...errors import OptionError
            raise OptionError(f"vtp: video_pruning_rate (vLLM's EVS) is set, but vLLM's "
                              f"{_vllm_base(type(self)).__name__} does not implement it")
        if not self._vtp_evs:
            turn_on(vllm_config)

    def _vtp_t_factor(self, modality, kwargs, i) -> float:
        if modality != "video":
            return 1.0
        secs = kwargs.get("second_per_grid_ts")
        s = float(secs[i]) if secs is not None else 1.0
        return s * float(getattr(self.config.vision_config, "tokens_per_second", 1.0))

    def _vtp_item_positions(self, kwargs, i: int) -> torch.Tensor:
        """Item ``i``'s :func:`item_positions` (the batch holds one modality)."""
        modality = "video" if kwargs.get("video_grid_thw") is not None else "image"
        grids = kwargs[f"{modality}_grid_thw"]
        grids = grids if not isinstance(grids, torch.Tensor) or grids.dim() == 2 else grids[None]
        merge = self.config.vision_config.spatial_merge_size
        return item_positions(grids[i], merge, self._vtp_t_factor(modality, kwargs, i))

    def _vtp_temporal(self, kwargs, i: int) -> torch.Tensor:
        """Item ``i``'s temporal positions: where they change a new frame starts, as the
        transformers path finds frames in the M-RoPE positions (kernels/frames.py); for a clip
        of grid ``(t, h, w)``, token ``j``'s frame is ``j // (h * w / merge^2)`` (while
        ``t_factor * t`` stays distinct), for an image one frame."""
        return self._vtp_item_positions(kwargs, i)[:, 0]

    def _vtp_output(self, feats, kept_idx, kwargs):
        if self._vtp_evs:        # vLLM's EVS (video_pruning_rate) appended them already
            return feats
        modality = "video" if kwargs.get("video_grid_thw") is not None else "image"
        feats = list(feats) if not isinstance(feats, torch.Tensor) else list(feats.unbind(0))
        out = []
        for i, f in enumerate(feats):
            pos = self._vtp_item_positions(kwargs, i)
            if kept_idx is not None:
                pos = pos[kept_idx[i].cpu()]
            if pos.shape[0] != f.shape[0]:
                raise RuntimeError(f"vtp: {modality} {i} has {f.shape[0]} embeddings for "
                                   f"{pos.shape[0]} positions")
            out.append(torch.cat([f, pos.to(device=f.device, dtype=f.dtype)], dim=1))
        return tuple(out)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        pruned = {}
        for f in mm_features:
            name = field_names(f.modality)[0]
            if f.data is not None and name in f.data:
                pruned[id(f)] = (int(f.data[name].data[0]), int(f.data[name].data[1]))
        if not pruned:
            return super().get_mrope_input_positions(input_tokens, mm_features)

        def unpruned(f):
            r = f.mm_position
            if id(f) not in pruned:
                return None
            k, V = pruned[id(f)]
            if r.length != k:
                raise RuntimeError(f"vtp: a pruned run of {r.length} tokens, {k} expected")
            return [input_tokens[r.offset]] * V

        return widened_positions(super().get_mrope_input_positions, input_tokens, mm_features,
                                 unpruned)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions,
                                  num_computed_tokens):
        from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration as Q
        return Q.recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions,
                                           num_computed_tokens)

    def get_encoder_cudagraph_config(self):
        # as vLLM does with EVS on: the encoder CUDA-graph path would skip embed_multimodal
        cfg = super().get_encoder_cudagraph_config()    # only called where vLLM's class has it
        return dataclasses.replace(cfg, modalities=[]) if dataclasses.is_dataclass(cfg) else cfg


def widened_positions(positions_of, input_tokens, mm_features, unpruned):
    """A pruned prompt's M-RoPE positions: ``positions_of`` (vLLM's ``get_mrope_input_positions``)
    on the prompt with every pruned item widened back to ``unpruned(feature)`` (its unpruned
    token ids; None: not pruned), then the widened columns removed. The kept tokens' own columns
    are fixed later by ``recompute_mrope_positions``; the text's are final here."""
    tokens, feats, drop, shift, at = [], [], [], 0, 0
    for f in sorted(mm_features, key=lambda f: f.mm_position.offset):
        r = f.mm_position
        tokens += input_tokens[at:r.offset]
        full = unpruned(f)
        if full is None:
            full = input_tokens[r.offset:r.offset + r.length]
        tokens += full
        start = r.offset + shift
        drop += range(start + r.length, start + len(full))
        feats.append(dataclasses.replace(f, mm_position=dataclasses.replace(r, offset=start,
                                                                             length=len(full))))
        shift += len(full) - r.length
        at = r.offset + r.length
    tokens += input_tokens[at:]
    positions, _ = positions_of(tokens, feats)
    keep = torch.ones(positions.shape[1], dtype=torch.bool)
    keep[drop] = False
    positions = positions[:, keep]
    return positions, int(positions.max()) + 1 - len(input_tokens)
