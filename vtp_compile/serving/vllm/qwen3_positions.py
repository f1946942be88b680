"""Qwen3-VL's M-RoPE positions of kept tokens, and the layout of a pruned clip.

**Which positions.** As on Qwen2.5-VL (:mod:`.mrope`): a pruned prompt's positions are the
unpruned prompt's with the dropped tokens' columns removed. Qwen3-VL numbers an image as a grid
from one past its ``<|vision_start|>`` (``(p, p + row, p + col)``), the text after it at one past
the grid's largest position; a clip is one such grid per temporal patch, each after its
timestamp text and ``<|vision_start|>`` (``t`` is never scaled by time).

**How they get there.** vLLM computes a request's positions before the tower runs, so, as on
Qwen2.5-VL, :meth:`Qwen3PositionsMixin.get_mrope_input_positions` computes them on the prompt with
every pruned item widened back to its unpruned tokens and removes the extra columns: text
positions are final from the start. ``embed_multimodal`` appends :data:`CHANNELS` columns to every
item's rows (:func:`encode`), and the runner hands each prefill chunk's rows to
:meth:`Qwen3PositionsMixin.recompute_mrope_positions`, which writes the rows' positions:

* a **run** row (an image's kept token, an unpruned clip's token): its ``(t, h, w)`` relative to
  the start of its run, written at the next placeholder slot (``<|image_pad|>``/``<|video_pad|>``)
  as ``row + p + 1``, ``p`` the position of the ``<|vision_start|>`` before it;
* a **clip** row (every row of a pruned clip, text included, see below): its ``(t, h, w)``
  relative to the clip's placeholder start, its index ``j`` in the placeholder and ``lead``, the
  index of the placeholder's first ``<|video_pad|>``, which locate it in the prompt; written as
  ``row + q + 1``, ``q`` the position of the token before the placeholder.

vLLM's own recompute (``evs.recompute_mrope_positions``) would restart the text after an item at
one past the *kept* tokens' largest position, so text positions would depend on the selection.

**A pruned clip's layout.** The processor fixes a clip's token count before the tower runs, but
how many tokens each frame keeps is known only after the selection. The clip's placeholder is
therefore all embedding slots (as with vLLM's EVS): its token ids are a stand-in (every kept
``<|video_pad|>`` after the first timestamp, the other frames' timestamps and markers after them)
and the model writes the real layout into its rows (:func:`clip_rows`): per frame its timestamp
text, ``<|vision_start|>``, that frame's kept tokens, ``<|vision_end|>`` — the transformers path's
prompt, with the same positions. Text rows carry the text's embeddings and no deepstack features.

Values travel in the embeddings' dtype, so each is sent as ``(v // 256, v % 256)``: exact in
bfloat16 up to 65535.
"""
from __future__ import annotations

import functools

import torch

from .mrope import widened_positions
from .processor import field_names

FIELDS = 6                       # kind, t, h, w, j, lead
CHANNELS = 2 * FIELDS
RUN, CLIP = 0, 1


def encode(values: torch.Tensor, dtype) -> torch.Tensor:
    """``[n, FIELDS]`` non-negative ints below 65536 -> ``[n, CHANNELS]`` of ``dtype``."""
    if values.numel() and (int(values.min()) < 0 or int(values.max()) > 65535):
        raise RuntimeError("vtp: a position outside 0..65535")
    return torch.cat([values // 256, values % 256], 1).to(dtype)


def decode(rows: torch.Tensor) -> torch.Tensor:
    v = rows.round().long()
    return v[:, :FIELDS] * 256 + v[:, FIELDS:]


def run_rows(grid_thw, merge: int) -> torch.Tensor:
    """``[t*h*w/merge^2, FIELDS]``: every token of an item's runs, ``(t, h, w)`` relative to the
    start of its run (``t`` 0: each temporal patch of a clip is a run of its own)."""
    t, h, w = (int(x) for x in grid_thw)
    rows, cols = h // merge, w // merge
    r = torch.arange(rows).repeat_interleave(cols).repeat(t)
    c = torch.arange(cols).repeat(rows * t)
    out = torch.zeros(r.shape[0], FIELDS, dtype=torch.long)
    out[:, 2], out[:, 3] = r, c
    return out


def frames(grid_thw, merge: int) -> torch.Tensor:
    """Each token's temporal patch (its frame): ``j // (h * w / merge^2)``."""
    t, h, w = (int(x) for x in grid_thw)
    return torch.arange(t).repeat_interleave(h * w // (merge * merge))


def clip_layout(ids: list[int], kept: torch.Tensor, grid_thw, merge: int, cfg) -> torch.Tensor:
    """``[len(ids), FIELDS]`` :data:`CLIP` rows of a pruned clip whose real layout is ``ids``
    (per frame: timestamp, ``<|vision_start|>``, its kept tokens, ``<|vision_end|>``), ``kept``
    the kept token indices (ascending): each row's unpruned position relative to the layout's
    start, its index ``j`` and ``lead`` (see the module)."""
    _, h, w = (int(x) for x in grid_thw)
    rows, cols = h // merge, w // merge
    cells = kept % (rows * cols)
    out = torch.zeros(len(ids), FIELDS, dtype=torch.long)
    p, base, k = 0, 0, 0
    for j, tok in enumerate(ids):
        if tok == cfg.video_token_id:
            cell = int(cells[k])
            out[j, 1:4] = torch.tensor([base, base + cell // cols, base + cell % cols])
            k += 1
            continue
        if tok == cfg.vision_end_token_id:      # after the frame's grid, kept tokens or not
            p = base + max(rows, cols)
        out[j, 1:4] = p
        p += 1
        if tok == cfg.vision_start_token_id:
            base = p
    out[:, 0] = CLIP
    out[:, 4] = torch.arange(len(ids))
    out[:, 5] = ids.index(cfg.vision_start_token_id) + 1
    return out


def clip_ids(counts: list[int], timestamps, tokenizer, cfg) -> list[int]:
    """A clip's token ids with ``counts[f]`` ``<|video_pad|>`` in frame ``f`` (vLLM's own
    ``get_video_repl``, which the processor uses)."""
    from vllm.model_executor.models.qwen3_vl import Qwen3VLMultiModalProcessor
    return list(Qwen3VLMultiModalProcessor.get_video_repl(
        tokens_per_frame=counts, timestamps=timestamps, tokenizer=tokenizer,
        vision_start_token_id=cfg.vision_start_token_id, vision_end_token_id=cfg.vision_end_token_id,
        video_token_id=cfg.video_token_id, select_token_id=False).full)


def timestamps_of(value, i: int) -> list[float]:
    ts = value[i] if isinstance(value, (list, tuple)) else value[i] if value.dim() > 1 else value
    return [float(x) for x in (ts.tolist() if isinstance(ts, torch.Tensor) else ts)]


class Qwen3PositionsMixin:
    """Before :class:`~.mrope.MRopePruningMixin` (whose ``__init__`` turns vLLM's pruning path on)
    in the Qwen3-VL adapter."""

    def _vtp_unpruned_tokens(self, feature) -> list[int] | None:
        """The unpruned tokens of a pruned item's placeholder (None: not pruned)."""
        cfg = self.config
        merge = cfg.vision_config.spatial_merge_size
        data = feature.data
        name = field_names(feature.modality)[0]
        if data is None or name not in data:
            return None
        V = int(data[name].data[1])
        if feature.modality == "image":
            return [cfg.image_token_id] * V
        t, h, w = (int(x) for x in data["video_grid_thw"].data)
        ts = data["timestamps"].data
        ts = [float(x) for x in (ts.tolist() if isinstance(ts, torch.Tensor) else ts)]
        return clip_ids([h * w // (merge * merge)] * t, ts, self._tokenizer, cfg)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration as Q
        full = {} if self._vtp_evs else {id(f): self._vtp_unpruned_tokens(f) for f in mm_features}
        if not any(v is not None for v in full.values()):
            return Q.get_mrope_input_positions(self, input_tokens, mm_features)
        return widened_positions(functools.partial(Q.get_mrope_input_positions, self),
                                 input_tokens, mm_features, lambda f: full[id(f)])

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions,
                                  num_computed_tokens):
        if self._vtp_evs:       # vLLM's EVS (video_pruning_rate): its own channels and recompute
            from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration as Q
            return Q.recompute_mrope_positions(self, input_ids, multimodal_embeddings,
                                               mrope_positions, num_computed_tokens)
        pos = mrope_positions.clone()
        embeds = [e[:, :-CHANNELS] for e in multimodal_embeddings]
        cfg = self.config
        ids = torch.as_tensor(input_ids, device=pos.device).long()
        slots = ((ids == cfg.image_token_id) | (ids == cfg.video_token_id)).nonzero().flatten()
        starts = (ids == cfg.vision_start_token_id).nonzero().flatten()
        cursor = num_computed_tokens
        for e in multimodal_embeddings:
            if not e.shape[0]:
                continue
            v = decode(e[:, -CHANNELS:].to(pos.device))
            if int(v[0, 0]) == RUN:
                at = slots[slots >= cursor][:v.shape[0]]
                if at.numel() != v.shape[0] or not starts.numel() or starts[0] > at[0]:
                    raise RuntimeError(f"vtp: {v.shape[0]} multimodal embeddings for {at.numel()} "
                                       f"placeholder slots after token {cursor}")
                base = pos[0, starts[torch.searchsorted(starts, at) - 1]] + 1
            else:
                j0, lead = int(v[0, 4]), int(v[0, 5])
                if j0:          # the chunk starts inside this clip's placeholder
                    s = cursor - j0
                else:
                    s = int(slots[slots >= cursor][0]) - lead
                at = s + v[:, 4]
                base = (pos[0, s - 1] + 1 if s > 0 else torch.zeros((), dtype=pos.dtype)).expand(at.shape[0])
            pos[:, at] = (v[:, 1:4] + base[:, None]).T.to(pos.dtype)
            cursor = int(at[-1]) + 1
        delta = int(pos.max()) + 1 - pos.shape[1] if pos.numel() else 0
        return embeds, pos, delta
