"""Self-describing KV caches: dead slots carry a marker that decode graphs read back.

A pruned prefill leaves each layer's cache in one of two layouts:

* **compacted** (full-attention layers): row ``b`` holds its kept prompt tokens in order, then
  dead slots (:mod:`vtp_compile.kernels.select`). Cache column ``j`` is no longer prompt
  position ``j``, so transformers' decode mask (built from the 2-D attention mask as if it
  were) is wrong for such a row; the decode graph replaces it with "every live column".
* **positional** (sliding-window and chunked layers, whose masks count positions and whose
  caches keep the last window of positions): the cache keeps the unpruned layout
  (:func:`to_positional`), and the removed positions are dead; the decode graph keeps
  transformers' mask and masks the dead columns too.

A dead slot's key is zero and its value carries ``MARK`` in channel 0 and ``±TAG`` in channel 1
(the sign tells the layout), exactly representable in fp32, fp16 and bf16. Every compacted row
that lost a position holds at least one dead slot, so a decode step can tell, per row, whether
the cache came from a pruned prefill: no state crosses calls, beam-search reordering and cache
cropping move the markers with the rows, and nothing is read back to the host. A real value
vector would have to hold exactly -16384 and ±8192 in its first two channels to be mistaken for
a dead slot. Quantised caches (which cannot hold these values) are not supported.
"""
from __future__ import annotations

from typing import Optional

import torch

from .registry import decomposed

MARK = -16384.0
TAG = 8192.0
COMPACTED, POSITIONAL = 1, -1


# ---- references ---------------------------------------------------------------------------------
def mark_dead(cache: torch.Tensor, dead: torch.Tensor, is_value: bool, layout: int) -> torch.Tensor:
    """``cache`` ``[B, H, S, D]`` with columns ``dead`` ``[B, S]`` cleared (keys) or marked
    (values: ``MARK`` in channel 0, ``layout * TAG`` in channel 1, zeros elsewhere)."""
    ch = torch.arange(cache.shape[-1], device=cache.device)
    fill = torch.zeros(cache.shape[-1], dtype=cache.dtype, device=cache.device)
    if is_value:   # functional (no in-place writes): this is also the decomposition Inductor traces
        fill = torch.where(ch == 0, MARK, torch.where(ch == 1, layout * TAG, fill)).to(cache.dtype)
    return torch.where(dead[:, None, :, None], fill, cache)


def to_positional(cache: torch.Tensor, origin: torch.Tensor, slot_live: torch.Tensor,
                  length: int, is_value: bool) -> torch.Tensor:
    """A compacted cache ``[B, H, W, D]`` back in the unpruned layout ``[B, H, length, D]``:
    live slot ``j`` of row ``b`` at position ``origin[b, j]``, every other position dead
    (positional marker). For layers whose mask counts positions (sliding windows, chunks)."""
    B, H, W, D = cache.shape
    dead = torch.ones(B, length, dtype=torch.bool, device=cache.device)
    target = torch.where(slot_live, origin, torch.full_like(origin, length))
    dead = torch.cat([dead, dead[:, :1]], 1).scatter(1, target, False)[:, :length]
    full = torch.zeros(B, H, length + 1, D, dtype=cache.dtype, device=cache.device)
    ix = target[:, None, :, None].expand(B, H, W, D)
    full = full.scatter(2, ix, cache)[:, :, :length]
    return mark_dead(full, dead, is_value, POSITIONAL)


def dead_columns(past_values: torch.Tensor):
    """``(compacted_dead, positional_dead)``, each bool ``[B, S]``, read from a value cache."""
    v = past_values[:, 0, :, :2]
    tagged = v[..., 0] == MARK
    return tagged & (v[..., 1] == COMPACTED * TAG), tagged & (v[..., 1] == POSITIONAL * TAG)


def decode_mask(mask: Optional[torch.Tensor], past_values: torch.Tensor, q_len: int,
                is_causal: bool) -> torch.Tensor:
    """The attention mask of a decode step over ``cat(past, new)`` keys, given the layer's
    ``past_values`` ``[B, H, P, D]`` and the step's own ``mask`` (``[B or 1, 1, q, P + q]``
    bool/additive float, or None with ``is_causal``).

    Rows whose cache is compacted attend to every live cached column and causally to the new
    tokens; other rows keep ``mask``, minus the dead columns of a positional cache. Returns a
    mask of ``mask``'s dtype (bool when ``mask`` is None), ``[B, 1, q, P + q]``.
    """
    B, _, P, _ = past_values.shape
    dev = past_values.device
    comp, pos = dead_columns(past_values)
    new = torch.ones(q_len, q_len, dtype=torch.bool, device=dev).tril()
    override = torch.cat([(~comp)[:, None, :].expand(B, q_len, P), new.expand(B, q_len, q_len)], -1)
    if mask is None:
        base = torch.ones(q_len, P + q_len, dtype=torch.bool, device=dev)
        if is_causal:
            base = base.tril(P)
        base = base[None, None]
    else:
        base = mask if mask.dtype == torch.bool else mask > float("-inf")
    pos_ok = torch.cat([~pos, torch.ones(B, q_len, dtype=torch.bool, device=dev)], -1)
    allowed = torch.where(comp.any(-1)[:, None, None, None], override[:, None],
                          base & pos_ok[:, None, None, :])
    if mask is None or mask.dtype == torch.bool:
        return allowed
    return torch.zeros_like(allowed, dtype=mask.dtype).masked_fill(~allowed, float("-inf"))


def positional_mask(mask: torch.Tensor, values: torch.Tensor,
                    slot_live: Optional[torch.Tensor]) -> torch.Tensor:
    """The attention mask of a layer that reads a static (preallocated) cache: ``mask``
    (``[B or 1, 1, q, S']`` bool or additive float, its key columns the buffer's first ``S'``
    slots, which are positions) minus the slots ``values`` ``[B, H, S, D]`` marks dead
    (positional marker).

    ``slot_live`` ``[B, q]`` (a compacted prefill; None in decode): a dead query slot may attend
    to every key, so that no row is all-masked (its output is never read). A cache without
    markers (an unpruned prefill) leaves ``mask`` as it is. Returns ``mask``'s dtype,
    ``[B, mask's dim 1, q, S]``.
    """
    _, pos = dead_columns(values)
    pos = pos[:, :mask.shape[-1]]      # a prefill may read only the buffer's first slots
    base = mask if mask.dtype == torch.bool else mask > float("-inf")
    allowed = base & ~pos[:, None, None, :]
    if slot_live is not None:
        allowed = allowed | ~slot_live[:, None, :, None]
    if mask.dtype == torch.bool:
        return allowed
    return torch.zeros_like(allowed, dtype=mask.dtype).masked_fill(~allowed, float("-inf"))


# ---- registration -------------------------------------------------------------------------------
@torch.library.custom_op("vtp::mark_dead", mutates_args=())
def _mark_dead(cache: torch.Tensor, dead: torch.Tensor, is_value: bool, layout: int) -> torch.Tensor:
    return mark_dead(cache, dead, is_value, layout)


@_mark_dead.register_fake
def _(cache, dead, is_value, layout):
    return torch.empty_like(cache)


@torch.library.custom_op("vtp::to_positional", mutates_args=())
def _to_positional(cache: torch.Tensor, origin: torch.Tensor, slot_live: torch.Tensor,
                   length: int, is_value: bool) -> torch.Tensor:
    return to_positional(cache, origin, slot_live, length, is_value)


@_to_positional.register_fake
def _(cache, origin, slot_live, length, is_value):
    B, H, _, D = cache.shape
    return cache.new_empty((B, H, length, D))


@torch.library.custom_op("vtp::decode_mask", mutates_args=())
def _decode_mask(mask: Optional[torch.Tensor], past_values: torch.Tensor, q_len: int,
                 is_causal: bool) -> torch.Tensor:
    return decode_mask(mask, past_values, q_len, is_causal)


@_decode_mask.register_fake
def _(mask, past_values, q_len, is_causal):
    B, _, P, _ = past_values.shape
    return past_values.new_empty((B, 1, q_len, P + q_len),
                                 dtype=torch.bool if mask is None else mask.dtype)


@torch.library.custom_op("vtp::positional_mask", mutates_args=())
def _positional_mask(mask: torch.Tensor, values: torch.Tensor,
                     slot_live: Optional[torch.Tensor]) -> torch.Tensor:
    return positional_mask(mask, values, slot_live)


@_positional_mask.register_fake
def _(mask, values, slot_live):
    B = values.shape[0]
    return mask.new_empty((B, mask.shape[1], mask.shape[2], mask.shape[3]))


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
decomposed("mark_dead", mark_dead)
decomposed("to_positional", to_positional)
decomposed("decode_mask", decode_mask)
decomposed("positional_mask", positional_mask)
