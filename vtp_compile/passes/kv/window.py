"""The positional layout of a sliding-window (or chunked) layer of transformers' dynamic cache.

Such a layer stores ``cat([past, new], dim=-2)[:, :, -(w-1):]``: the last window of positions,
and its masks count positions. After a pruned prefill its cache keeps the unpruned layout
(``vtp::to_positional``) with the removed positions dead, marked ``POSITIONAL``
(:mod:`vtp_compile.kernels.cache`); a decode step keeps transformers' mask and masks the dead
columns too (the same ``vtp::decode_mask`` as the compacted layout reads the sign of the marker).
"""
from __future__ import annotations

import torch

from ...graph.cache_nodes import is_cache_update, role, window_slice
from ...graph.fx_utils import Unsupported
from ...kernels.cache import POSITIONAL
from .. import traced
from .compacted import CompactedCache

ops = torch.ops.vtp


class PositionalWindow(CompactedCache):
    kind = "positional window"
    compacted = False

    def leave_cache(self, g, n, slot_live, state, out) -> bool:
        return False          # the stored window leaves through its slice (leave_slice)

    def leave_slice(self, g, sl, x, dim, origin, slot_live, state) -> None:
        """The slice that stores the last window reads the cache restored to the unpruned
        layout (removed positions dead)."""
        if not (is_cache_update(x) and dim == 2 and window_slice(x) is sl):
            raise Unsupported(f"slice {sl.name} involves the sequence dimension")
        with g.inserting_before(sl):
            length = g.call_function(traced.seq_length, (state.first_visual,))
            full = g.call_function(ops.to_positional.default,
                                   (x, origin, slot_live, length, role(x) == "value"))
        sl.replace_input_with(x, full)
        state.cache_outputs[x] = full

    def evict(self, g, ev) -> None:
        for n in self.lv.nodes:
            if not is_cache_update(n):
                continue
            sl = window_slice(n)
            if sl is None:
                continue
            ev.out.prepend(sl)        # the stored window only feeds the output: move it there
            cur = sl.args[0]
            removed = ev.removed(before=sl)
            with g.inserting_before(sl):
                new = g.call_function(ops.mark_dead.default, (cur, removed, role(n) == "value",
                                                              POSITIONAL))
            sl.replace_input_with(cur, new)
