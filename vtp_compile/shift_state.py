"""Runtime state that crosses from a DSTP prefill to its decode steps.

The only state vtp keeps across calls. A pruned prefill records, per cache column, which
entries are visual and which of those are active, plus a fingerprint of layer 0's cached keys.
Every decode step looks the state up and checks it against the cache it is given:

* the fingerprint of the first ``P`` cached key columns does not match (the cache does not come
  from the last DSTP prefill of this configuration, e.g. a text-only prompt whose prefill had
  nothing to prune): the step attends to the whole cache, and one INFO line says so;
* the fingerprint matches but the cache is not longer than ``P``: ``ValueError``.

States are keyed by the backend configuration. Two ``generate`` calls interleaved step by step
with the same configuration are not supported (the second prefill replaces the first's state,
so the first's decode steps stop matching and attend to their whole cache; logged).
"""
from __future__ import annotations

import dataclasses
import logging

import torch

log = logging.getLogger("vtp_compile")


@dataclasses.dataclass
class ShiftState:
    visual: torch.Tensor        # [B, P] bool: cache column holds a visual token
    active: torch.Tensor        # [B, P] bool: ... an active one (the rest of the visual: reserve)
    slot_live: torch.Tensor     # [B, P] bool: cache column holds a kept token (not a dead slot)
    k: torch.Tensor             # [B] active tokens per row
    tau: float
    fingerprint: torch.Tensor   # [B] float64
    steps: int = 0
    swaps: int = 0              # rows x steps where the active set was replaced

    @property
    def prompt_len(self) -> int:
        return self.visual.shape[1]


_STATES: dict[str, ShiftState] = {}
_STEP: dict[str, ShiftState | None] = {}   # what this decode step's lookup found, per key
_WARNED: set = set()


def fingerprint(keys: torch.Tensor, slot_live: torch.Tensor) -> torch.Tensor:
    """Per-row sum of layer 0's live key columns among the first ``P`` (``keys``
    ``[B, H, S, D]``, ``slot_live`` ``[B, P]``; dead slots are cleared in the cache)."""
    P = slot_live.shape[1]
    w = slot_live.to(keys.device, torch.float64)[:, None, :, None]
    return (keys[:, :, :P].double() * w).sum(dim=(1, 2, 3))


def begin(key: str, visual: torch.Tensor, active: torch.Tensor, slot_live: torch.Tensor,
          keys0: torch.Tensor, k: torch.Tensor, tau: float) -> None:
    _STATES[key] = ShiftState(visual.clone(), active.clone(), slot_live.clone(), k.clone(),
                              float(tau), fingerprint(keys0, slot_live))
    _WARNED.discard(key)


def current(key: str) -> ShiftState | None:
    """What the last :func:`lookup` of ``key`` found (the same step's validated state)."""
    return _STEP.get(key)


def lookup(key: str, keys0: torch.Tensor) -> ShiftState | None:
    """The state for this decode step, or None if the cache is not from a DSTP prefill.

    Validates once per step (a fingerprint of the cache); :func:`current` returns the result
    to the step's later ops."""
    _STEP[key] = found = _lookup(key, keys0)
    return found


def _lookup(key: str, keys0: torch.Tensor) -> ShiftState | None:
    st = _STATES.get(key)
    S = keys0.shape[2]
    if st is not None and S >= st.prompt_len:
        fp = fingerprint(keys0, st.slot_live)
        if fp.shape == st.fingerprint.shape and torch.allclose(
                fp, st.fingerprint.to(fp.device), rtol=1e-9, atol=1e-9):
            if S <= st.prompt_len:
                raise ValueError(f"vtp dstp: decode step with {S} cache columns, but the prefill "
                                 f"left {st.prompt_len}")
            return st
    if key not in _WARNED:
        _WARNED.add(key)
        log.info("vtp dstp: this decode step's cache does not come from the last DSTP prefill "
                 "(e.g. a text-only prompt); attending to the whole cache")
    return None
