"""Small tensor functions the passes insert into graphs (traced by the inner backend).

Every function here is plain torch code on the graph's own tensors: what a site needs to know
about the current sequence (which positions are visual, which are live tokens, where each row's
last token is) and how many tokens each row keeps.
"""
from __future__ import annotations

from typing import Optional

import torch


def visual_mask_2d(splice_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool from the splice's ``[B, L, 1]`` (or ``[B, L, D]``) mask."""
    m = splice_mask
    while m.dim() > 2:
        m = m[..., 0]
    return m.bool()


def live_from_mask(mask: Optional[torch.Tensor], visual: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: real tokens, read from the first layer's attention mask.

    Every real token attends to itself and no token attends to padding, so the mask's diagonal
    (of its last ``L`` key columns) is the padding mask, whatever else the mask encodes (causal,
    bidirectional image blocks, sliding windows, chunks). No mask: no padding.
    """
    if mask is None:
        return torch.ones_like(visual)
    m = mask
    while m.dim() > 3:
        m = m[:, 0]
    L = visual.shape[1]
    sq = m[:, -L:, -L:]
    d = torch.gather(sq, 2, torch.arange(L, device=sq.device).view(1, L, 1).expand(sq.shape[0], L, 1))[..., 0]
    d = d if d.dtype == torch.bool else d > float("-inf")
    return d.expand_as(visual) | visual


def last_live(live: torch.Tensor) -> torch.Tensor:
    """``[B]`` int64: each row's last live position (its last token: padding on either side)."""
    L = live.shape[1]
    pos = torch.arange(L, device=live.device).expand_as(live)
    return torch.where(live, pos, torch.zeros_like(pos)).amax(1)


def count_visual(visual: torch.Tensor) -> torch.Tensor:
    """``[B]`` int64 visual tokens per row."""
    return visual.sum(1)


def keep_count(n_visual: torch.Tensor, budget: int, num: int, den: int) -> torch.Tensor:
    """Tokens each row keeps: ``min(budget, V_b)`` or ``ceil(V_b * num / den)`` (``budget`` 0)."""
    if budget > 0:
        return torch.clamp(n_visual, max=budget)
    return (n_visual * num + den - 1) // den


def with_reserve(n_keep: torch.Tensor, reserve: Optional[int]) -> torch.Tensor:
    """Tokens a :class:`~vtp_compile.sites.ReserveSite` carries: active plus reserve."""
    return n_keep + (n_keep if reserve is None else reserve)


def query_row(q: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
    """``[B, H, 1, D]``: each row's query at its last live position (``q`` ``[B, H, L, D]``)."""
    B, H, _, D = q.shape
    return torch.gather(q, 2, qpos.view(B, 1, 1, 1).expand(B, H, 1, D))


def query_key_row(mask: Optional[torch.Tensor], qpos: torch.Tensor, live: torch.Tensor,
                  causal: bool) -> torch.Tensor:
    """``[B, S]``: what each row's last live query may attend to — its row of the attention
    mask (bool, or additive float), or causal-and-live when the call has no mask."""
    B, S = live.shape
    if mask is None:
        allowed = live
        if causal:
            allowed = allowed & (torch.arange(S, device=live.device)[None, :] <= qpos[:, None])
        return allowed
    m = mask
    while m.dim() > 3:
        m = m[:, 0]
    m = m.expand(B, m.shape[-2], m.shape[-1])
    row = torch.gather(m, 1, qpos.view(B, 1, 1).expand(B, 1, m.shape[-1]))[:, 0]
    if row.dtype == torch.bool:
        return row & live
    return row.masked_fill(~live, float("-inf"))


def query_key_rows(mask: Optional[torch.Tensor], live: torch.Tensor, causal: bool) -> torch.Tensor:
    """``[B, L, S]``: what every query may attend to (live keys only): the attention mask's rows
    (bool, or additive float), or causal-and-live when the call has no mask."""
    B, S = live.shape
    if mask is None:
        allowed = live[:, None, :].expand(B, S, S)
        if causal:
            allowed = allowed & torch.ones(S, S, dtype=torch.bool, device=live.device).tril()
        return allowed
    m = mask
    while m.dim() > 3:
        m = m[:, 0]
    m = m.expand(B, m.shape[-2], m.shape[-1])
    if m.dtype == torch.bool:
        return m & live[:, None, :]
    return m.masked_fill(~live[:, None, :], float("-inf"))


def seq_len(idx: torch.Tensor):
    return idx.shape[1]


def kept_positions(idx: torch.Tensor, slot_live: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``: True at the live positions listed in ``idx`` ``[B, W]``."""
    L = like.shape[1]
    target = torch.where(slot_live, idx, torch.full_like(idx, L))
    out = torch.zeros(like.shape[0], L + 1, dtype=torch.bool, device=like.device)
    return out.scatter(1, target, True)[:, :L]


def compose_origin(origin: Optional[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """Original positions of the slots of a new compaction (``origin``: of the current layout,
    None for the unpruned sequence)."""
    return idx if origin is None else torch.gather(origin, 1, idx)


def removed_positions(origin: torch.Tensor, slot_live: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]`` over the original positions: True where no live slot comes from."""
    return ~kept_positions(origin, slot_live, like)


def seq_length(x: torch.Tensor):
    return x.shape[1]


def static_slots(slots: torch.Tensor, length) -> torch.Tensor:
    """``length`` slots of a static cache from the first of ``slots`` (``arange(n) + counter``)."""
    return slots[:1] + torch.arange(length, device=slots.device)


def first_slots(x: torch.Tensor, length, dim: int) -> torch.Tensor:
    return x.narrow(dim, 0, length)


def gather_slots(x: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """A ``[B, L]`` per-position tensor in the compacted layout ``origin`` ``[B, W]``."""
    return torch.gather(x, 1, origin)


def gather_columns(mask: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """A ``[B or 1, H or 1, q, S]`` mask's key columns at ``origin`` ``[B, W]``: ``[B, H or 1, q, W]``."""
    B, W = origin.shape
    m = mask.expand(B, *mask.shape[1:])
    ix = origin[:, None, None, :].expand(B, m.shape[1], m.shape[2], W)
    return torch.gather(m, 3, ix)


def causal_positions(origin: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, 1, W, S]``: a query at position ``origin[b, i]`` may attend to the slots (which
    are positions) up to its own, of a static cache's ``key`` ``[B, H, S, D]``."""
    S = key.shape[2]
    return (torch.arange(S, device=origin.device)[None, None, :] <= origin[:, :, None])[:, None]


def pad_slots(states: torch.Tensor, slots) -> torch.Tensor:
    """``states`` ``[B, H, n, D]`` in the first ``n`` of ``slots`` zero slots (``slots``: a
    count, a buffer whose dim 2 gives it, or None: ``states`` as they are)."""
    if slots is None:
        return states
    S = slots.shape[2] if isinstance(slots, torch.Tensor) else slots
    return torch.nn.functional.pad(states, (0, 0, 0, S - states.shape[2]))


def pad_positions(dead: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]`` over positions, widened with False to the ``S`` slots of ``buffer``."""
    return torch.nn.functional.pad(dead, (0, buffer.shape[2] - dead.shape[1]), value=False)


def compact_visual(visual: torch.Tensor, idx: torch.Tensor, slot_live: torch.Tensor) -> torch.Tensor:
    """The visual mask in the compacted layout (dead slots are not visual)."""
    return torch.gather(visual, 1, idx) & slot_live
