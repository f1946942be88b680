"""DSTP's ops. The runtime state (which cache columns are visual, which of those are active)
lives in :mod:`vtp_compile.shift_state`; these ops record it at prefill and read and update it
at every decode step."""
from __future__ import annotations

from typing import Optional

import torch

from .registry import STATEFUL_TAGS, stateful

from ..shift_state import ShiftState
from .dcp import topk_mask
from .scores import attn_row_scores


# ---- references ---------------------------------------------------------------------------------
def shift_columns(state, S: int, device, match: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[B, S]`` bool: the cache columns a decode step may attend to (non-visual or active;
    every column after the prompt). ``state`` None, or ``match`` (a 0-dim bool: the step's cache
    comes from the state's prefill) False: all of them."""
    if state is None:
        return torch.ones(1, S, dtype=torch.bool, device=device)
    B, P = state.visual.shape
    prompt = (~state.visual | state.active).to(device)
    cols = torch.cat([prompt, torch.ones(B, S - P, dtype=torch.bool, device=device)], 1)
    if match is not None:
        cols = cols | ~match.to(device)
    return cols


def shift_update(state, q: torch.Tensor, k: torch.Tensor, mask_row: Optional[torch.Tensor],
                 scale: float, cols: torch.Tensor) -> torch.Tensor:
    """Re-score active ∪ reserve with the current query; swap the active set on a large shift.

    Scores: head-mean softmax of ``q_last · k`` over the columns this step may see plus the
    reserve. ``shift = 1 - mass(active) / mass(best k)``; rows with shift > tau take the best k
    as their active set (``state`` is updated). Returns the columns the layers from the site on
    attend to, ``[B, S]``.
    """
    match = None
    if state is not None and not isinstance(state, ShiftState):   # a shift_state.Found
        state, match = state.state, state.match
    if state is None:
        return cols.clone()
    B, P = state.visual.shape
    S = k.shape[2]
    vis = torch.cat([state.visual.to(q.device), torch.zeros(B, S - P, dtype=torch.bool, device=q.device)], 1)
    active = cols.expand(B, S) & vis
    allowed = cols.expand(B, S) | vis
    if mask_row is not None:
        mr = mask_row.expand(B, S)
        allowed = allowed & (mr if mr.dtype == torch.bool else mr > float("-inf"))
    probs = attn_row_scores(q, k, allowed, scale, -1)                  # [B, S]
    best = topk_mask(probs, vis, state.k.to(q.device))
    mass_active = (probs * active).sum(-1)
    mass_best = (probs * best).sum(-1)
    shift = 1.0 - mass_active / mass_best.clamp(min=1e-30)
    swap = shift > state.tau
    if match is not None:       # a cache from another prefill: no swap, no state change
        swap = swap & match
    new_active = torch.where(swap[:, None], best, active)
    keep = new_active[:, :P]
    if match is not None:
        keep = torch.where(match, keep, state.active.to(keep.device))
    state.active = keep.clone()
    state.steps += 1
    n = swap.sum()      # stays on the device (no host read per step)
    state.swap_count = n if state.swap_count is None else state.swap_count + n
    out = ~vis | new_active | (torch.arange(S, device=q.device) >= P)
    return out if match is None else torch.where(match, out, cols.expand(B, S))


# ---- registration -------------------------------------------------------------------------------
@torch.library.custom_op("vtp::dstp_begin", mutates_args=(), **STATEFUL_TAGS)
def dstp_begin(active: torch.Tensor, visual: torch.Tensor, slot_live: torch.Tensor,
               keys0: torch.Tensor, k: torch.Tensor, tau: float, key: str) -> torch.Tensor:
    """Record a DSTP prefill's layout (compacted); returns the reserve mask ``visual & ~active``."""
    from .. import shift_state
    shift_state.begin(key, visual, active, slot_live, keys0, k, tau)
    return visual & ~active


@dstp_begin.register_fake
def _(active, visual, slot_live, keys0, k, tau, key):
    return torch.empty_like(visual)


@torch.library.custom_op("vtp::dstp_columns", mutates_args=(), **STATEFUL_TAGS)
def dstp_columns(keys0: torch.Tensor, key: str) -> torch.Tensor:
    """``[B or 1, S]`` bool: the cache columns this decode step attends to before the site."""
    from .. import shift_state
    found = shift_state.lookup(key, keys0)
    return shift_columns(found.state, keys0.shape[2], keys0.device,
                         found.match).expand(keys0.shape[0], -1).clone()


@dstp_columns.register_fake
def _(keys0, key):
    return keys0.new_empty((keys0.shape[0], keys0.shape[2]), dtype=torch.bool)


@torch.library.custom_op("vtp::dstp_update", mutates_args=(), **STATEFUL_TAGS)
def dstp_update(q: torch.Tensor, k: torch.Tensor, mask_row: Optional[torch.Tensor], scale: float,
                cols: torch.Tensor, key: str) -> torch.Tensor:
    """Score, measure the shift, maybe swap; ``[B, S]`` columns for the layers from the site on.

    ``cols`` is :func:`dstp_columns`' output: the data dependency orders this op after the
    step's validation, whose result it reuses."""
    from .. import shift_state
    return shift_update(shift_state.current(key), q, k, mask_row, scale, cols)


@dstp_update.register_fake
def _(q, k, mask_row, scale, cols, key):
    return torch.empty_like(cols)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
stateful("dstp_begin", "records DSTP's prefill layout in Python-side state")
stateful("dstp_columns", "reads DSTP's runtime state")
stateful("dstp_update", "reads and updates DSTP's runtime state")
