"""Ranks and inverse permutations, written without a scatter.

Every method that ranks tokens turns a sort order into each position's rank. Written as
``torch.empty_like(order).scatter(1, order, arange)``, that is a write into a fresh buffer,
which Inductor lowers as a mutation; its peak-memory reordering (``reorder_for_peak_memory``,
seen on torch 2.13 CPU) scheduled such a scatter after a fused kernel that read the buffer, so
that kernel read zeros (``vtp::frame_priority`` inside a VidCom2 prefill graph:
docs/debugging.md). The inverse of a permutation is its own argsort: plain data flow, the same
values, nothing to reorder wrongly.
"""
from __future__ import annotations

import torch


def inverse(order: torch.Tensor) -> torch.Tensor:
    """``[..., L]`` int64: the inverse of each row's permutation ``order`` (``out[order[i]] = i``)."""
    return torch.argsort(order, dim=-1, stable=True)


def ranks(key: torch.Tensor, descending: bool = False) -> torch.Tensor:
    """``[..., L]`` int64: each entry's place in its row sorted by ``key`` (ties: lower position
    first)."""
    return inverse(torch.sort(key, dim=-1, descending=descending, stable=True).indices)
