"""DyCoke's stage 2 (dynamic KV cache reduction) as two ops: the prefill records which cache
columns are visual, each decode step picks the visual columns the layers from the site on read.

State crosses calls in :mod:`vtp_compile.shift_state` (the same record, fingerprint and lookup
as DSTP's): ``visual`` (prompt columns holding a visual token), ``active`` (the current pick),
``k`` (tokens picked per row), ``tau`` (the similarity threshold), ``prev`` (the last step's
attention over the visual columns).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..shift_state import ShiftState
from .dcp import topk_mask
from .registry import STATEFUL_TAGS, stateful
from .scores import attn_row_scores


# ---- references ---------------------------------------------------------------------------------
def pick_count(visual: torch.Tensor, ratio: float) -> torch.Tensor:
    """``[B]`` int64: visual columns a decode step reads per row, ``floor(ratio * n)`` and at
    least one where the row has any (DyCoke's ``int(n * (1 - p))``, never zero)."""
    n = visual.sum(1)
    k = torch.floor(n.double() * ratio).long()
    return torch.where(n > 0, k.clamp(min=1), torch.zeros_like(k))


def select_update(found, q: torch.Tensor, k: torch.Tensor, mask_row: Optional[torch.Tensor],
                  scale: float) -> torch.Tensor:
    """One decode step: ``[B, S]`` bool, the cache columns the layers from the site on read.

    Scores: head-mean softmax of ``q_last · k`` over every column the step may see (the layers
    before the site read the whole cache). Rows whose attention over the prompt's visual columns
    has cosine similarity below ``tau`` with the previous step's (every row on the first step)
    pick their top ``k`` visual columns; the others keep their pick. The state is updated.
    ``found``: a :class:`~vtp_compile.shift_state.Found` (or a state)."""
    match = None
    state = found
    if state is not None and not isinstance(state, ShiftState):
        state, match = state.state, state.match
    B, S = k.shape[0], k.shape[2]
    if state is None:
        return torch.ones(B, S, dtype=torch.bool, device=q.device)
    P = state.visual.shape[1]
    pad = torch.zeros(B, S - P, dtype=torch.bool, device=q.device)
    vis = torch.cat([state.visual.to(q.device), pad], 1)
    allowed = None
    if mask_row is not None:
        mr = mask_row.expand(B, S)
        allowed = mr if mr.dtype == torch.bool else mr > float("-inf")
    probs = attn_row_scores(q, k, allowed, scale, -1)                  # [B, S]
    att = (probs * vis)[:, :P]
    if state.prev is None:
        renew = torch.ones(B, dtype=torch.bool, device=q.device)
    else:
        prev = state.prev.to(q.device)
        sim = torch.nn.functional.cosine_similarity(att, prev, dim=1, eps=1e-12)
        renew = sim < state.tau
    if match is not None:      # a cache from another prefill: no pick, no state change
        renew = renew & match
    best = topk_mask(probs, vis, state.k.to(q.device))[:, :P]
    pick = torch.where(renew[:, None], best, state.active.to(q.device))
    state.active = pick.clone()
    state.prev = att.clone() if match is None else torch.where(
        match, att, att if state.prev is None else state.prev.to(q.device))
    state.steps += 1
    n = renew.sum()
    state.swap_count = n if state.swap_count is None else state.swap_count + n
    out = ~vis | torch.cat([pick, pad], 1) | (torch.arange(S, device=q.device) >= P)
    if match is None:
        return out
    return torch.where(match, out, torch.ones_like(out))


# ---- registration -------------------------------------------------------------------------------
@torch.library.custom_op("vtp::decode_select_begin", mutates_args=(), **STATEFUL_TAGS)
def decode_select_begin(keys0: torch.Tensor, visual: torch.Tensor, slot_live: torch.Tensor,
                        ratio: float, similarity: float, key: str) -> torch.Tensor:
    """Record a prefill's visual cache columns (``visual``, ``slot_live`` ``[B, P]``) and layer
    0's keys' fingerprint; returns a copy of ``keys0`` (the graph reads it in its place, so the
    record is never dead code)."""
    from .. import shift_state
    shift_state.begin(key, visual, visual, slot_live, keys0, pick_count(visual, ratio), similarity)
    return keys0.clone()


@decode_select_begin.register_fake
def _(keys0, visual, slot_live, ratio, similarity, key):
    return torch.empty_like(keys0)


@torch.library.custom_op("vtp::decode_select", mutates_args=(), **STATEFUL_TAGS)
def decode_select(q: torch.Tensor, k: torch.Tensor, mask_row: Optional[torch.Tensor], scale: float,
                  keys0: torch.Tensor, key: str) -> torch.Tensor:
    """Look the step's state up (``keys0``: layer 0's keys, for the fingerprint), pick, and
    return the ``[B, S]`` columns the layers from the site on read."""
    from .. import shift_state
    return select_update(shift_state.lookup(key, keys0), q, k, mask_row, scale)


@decode_select.register_fake
def _(q, k, mask_row, scale, keys0, key):
    return keys0.new_empty((keys0.shape[0], keys0.shape[2]), dtype=torch.bool)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
stateful("decode_select_begin", "records a prefill's visual cache columns in Python-side state")
stateful("decode_select", "reads and updates DyCoke's decode-time pick")
