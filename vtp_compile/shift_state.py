"""Runtime state that crosses from a prefill to its decode steps (DSTP; DyCoke's stage 2).

The only state vtp keeps across calls. A pruned prefill records, per cache column, which
entries are visual and which of those are active, plus a fingerprint of layer 0's cached keys.
Every decode step looks the state up and checks it against the cache it is given:

* the fingerprint of the first ``P`` cached key columns does not match (the cache does not come
  from the last DSTP prefill of this configuration, e.g. a text-only prompt whose prefill had
  nothing to prune): the step attends to the whole cache, and one INFO line says so (on CPU;
  on CUDA the match is a device tensor that selects the columns, never read on the host);
* the fingerprint matches but the cache is not longer than ``P``: ``ValueError`` (CPU) or a
  device-side assertion (CUDA).

No host read on CUDA; but the state lives in Python and is replaced at every step, so a decode
graph that uses it cannot be replayed as a CUDA graph: ``mode="reduce-overhead"`` is refused
for DSTP (:mod:`vtp_compile.methods.dstp`) and for DyCoke with its stage 2
(:mod:`vtp_compile.methods.dycoke`). DyCoke's stage 2 keeps its pick in ``active`` and the last
step's attention in ``prev`` (:mod:`vtp_compile.kernels.decode_select`).

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
    swap_count: torch.Tensor | None = None   # 0-dim, on the device: rows x steps swapped
    prev: torch.Tensor | None = None         # [B, P] last step's attention (a DecodeSite's rule)

    @property
    def prompt_len(self) -> int:
        return self.visual.shape[1]

    @property
    def swaps(self) -> int:
        """Rows x steps where the active set was replaced (a host read: for reports)."""
        return 0 if self.swap_count is None else int(self.swap_count)


@dataclasses.dataclass
class Found:
    """A decode step's lookup: the state and whether this step's cache matches it (a 0-dim
    bool tensor on the cache's device; None: no state applies)."""
    state: ShiftState | None
    match: torch.Tensor | None = None


_STATES: dict[str, ShiftState] = {}
_STEP: dict[str, Found] = {}   # what this decode step's lookup found, per key
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


def current(key: str) -> Found:
    """What the last :func:`lookup` of ``key`` found (the same step's validated state)."""
    return _STEP.get(key, Found(None))


def lookup(key: str, keys0: torch.Tensor) -> Found:
    """The state for this decode step and whether the cache matches it.

    Validates once per step (a fingerprint of the cache, compared on the device); :func:`current`
    returns the result to the step's later ops."""
    _STEP[key] = found = _lookup(key, keys0)
    return found


def _lookup(key: str, keys0: torch.Tensor) -> Found:
    st = _STATES.get(key)
    S = keys0.shape[2]
    if st is not None and S >= st.prompt_len and st.fingerprint.shape[0] == keys0.shape[0]:
        fp = fingerprint(keys0, st.slot_live)
        match = torch.isclose(fp, st.fingerprint.to(fp.device), rtol=1e-9, atol=1e-9).all()
        if S <= st.prompt_len:
            msg = (f"vtp: decode step with {S} cache columns, but the prefill left "
                   f"{st.prompt_len}")
            if keys0.device.type != "cpu":
                torch._assert_async(~match, msg)
            elif bool(match):
                raise ValueError(msg)
        if keys0.device.type != "cpu" or bool(match):
            return Found(st, match)     # on CUDA the match decides on the device
    _log_unmatched(key)
    return Found(None)


def _log_unmatched(key: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.info("vtp: this decode step's cache does not come from the last prefill of this "
                 "configuration (DSTP, DyCoke's stage 2) "
                 "(e.g. a text-only prompt); attending to the whole cache")
