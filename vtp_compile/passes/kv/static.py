"""The static buffer (``generate(..., cache_implementation="static")``).

transformers' ``StaticLayer.update`` (5.17 and later) preallocates each layer's keys and values
``[B, H, S, D]`` and writes a step's states in place at ``slots = arange(n) + counter``, then
``counter.add_(n)``, where ``counter`` is the layer's ``cumulative_length`` tensor; every
attention call reads the whole buffer, and the mask (``[B, 1, q, S]``) is built from the
model-level ``cache_position``, so its key columns are positions.

A pruned prefill keeps that contract by writing the **positional** layout
(:mod:`vtp_compile.kernels.cache`): every layer's buffer holds prompt position ``p`` at slot
``p``, and every position the selection removed (and every padding position) is a dead slot,
marked in the values. Concretely:

* a layer from the site on computes only the kept tokens; its write scatters them to their
  positions (``to_positional``) over ``arange(L) + counter`` and advances its counter by the
  prompt length ``L``, not by the kept count (:meth:`StaticBuffer.finish`);
* a layer before the site wrote every position already; its value buffer is marked in place
  after the selection (:meth:`StaticBuffer.evict`);
* every attention call that reads a buffer gets ``positional_mask``: transformers' mask minus
  the dead slots read from the buffer itself. Decode steps need nothing else: they write at
  ``L + t`` and RoPE sees the position transformers gives them.

Why not compact the buffer like the dynamic cache: a static buffer's size is fixed
(``max_cache_len``) and decode attends to all of it under the mask anyway, so compaction would
save neither memory nor decode time, and it would need every decode write remapped. The prefill
saving is the same. No state crosses calls; a decode step of an unpruned prefill is unchanged.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ...graph.cache_nodes import PASS_THROUGH, buffer_of, cache_role, root, static_write, static_writes
from ...graph.fx_utils import (StaticCacheUnsupported, Unsupported, hint, is_sdpa, op_name, sdpa_args,
                               set_sdpa_mask, tensor_val)
from ...kernels.cache import POSITIONAL
from ...sites import ReserveSite, RouteSite, method_of
from .. import traced
from .base import KVLayout

ops = torch.ops.vtp


def check_graph(g: fx.Graph) -> None:
    """Refuse the static-cache forms the positional layout does not cover: a buffer attention
    reads (a graph input or a tensor made in the graph) that is rewritten other than by
    ``index_copy_`` (a sliding-window layer that rolls or copies its window), or buffers of
    different sizes (sliding-window buffers are shorter). Other state (a linear-attention
    layer's recurrent or convolution state) is not a KV buffer and is left alone."""
    writes = static_writes(g.nodes)
    sizes = {hint(tensor_val(w.buffer).shape[2]) for w in writes}
    for sdpa in (n for n in g.nodes if is_sdpa(n)):
        a = sdpa_args(sdpa)
        for arg in (a["key"], a["value"]):
            r = root(arg)
            bad = [u for u in r.users if op_name(u) in ("copy_", "roll") and u.args[0] is r]
            if bad and (r.op == "placeholder" or op_name(r) == "zeros"):
                raise StaticCacheUnsupported(
                    f"static KV cache buffer {r.name} is rewritten by {op_name(bad[0])} (a "
                    "sliding-window layer's static cache), which vtp's positional layout does not "
                    "cover; use the default dynamic cache to prune this model")
    if len(sizes) > 1:
        raise StaticCacheUnsupported(
            f"static KV cache buffers of different sizes {sorted(sizes)} (sliding-window layers), "
            "which vtp's positional layout does not cover; use the default dynamic cache to prune "
            "this model")


class StaticBuffer(KVLayout):
    kind = "static buffer"
    preallocated = True
    compacted = False

    def __init__(self, lv):
        super().__init__(lv)
        self.writes = static_writes(lv.nodes)
        self.values = buffer_of(sdpa_args(lv.sdpa)["value"]) if lv.sdpa is not None else None

    def check_site(self, site) -> None:
        if isinstance(site, (ReserveSite, RouteSite)):
            raise StaticCacheUnsupported(
                f"{method_of(site)} with a static KV cache (cache_implementation='static'): "
                "its per-layer routing or reserve addresses the dynamic cache's compacted "
                "layout; use the default dynamic cache to prune with it")

    # ---- scores -------------------------------------------------------------------------------
    def prompt_mask(self, g, mask, visual):
        return prompt_slots(g, None, mask, visual)[1]     # key columns: S slots -> the prompt's

    def score_keys(self, g, key, mask, state, own_attention):
        if own_attention:   # recomputed keys: the current layout in the first slots
            width = g.call_function(traced.seq_length, (state.live,))
            key = g.call_function(traced.first_slots, (key, width, 2))
            mask = prompt_slots(g, None, unrestricted(mask), state.first_visual, state.origin)[1]
            return key, mask
        return prompt_slots(g, key, mask, state.first_visual, state.origin)

    def stand_ins(self) -> dict:
        return {w.buffer: w.states for w in self.writes}

    # ---- a compacted layer ------------------------------------------------------------------
    def restrict(self, g, sdpa, slot_live, origin, full_len, made) -> None:
        """Keys are the buffer's slots, i.e. positions: transformers' mask minus dead slots."""
        m = sdpa_args(sdpa)["attn_mask"]
        key = (m, self.values)
        if m is None or key not in made:   # no mask: each call cuts its own buffer
            with g.inserting_before(sdpa):
                made[key] = positional_mask(g, sdpa, self.values, slot_live, origin, full_len)
        set_sdpa_mask(sdpa, made[key], causal=False)

    def leave_write(self, n, origin, slot_live, state) -> None:
        # placed once every site is applied (finish): the last compaction covering it wins
        state.static_writes[n] = (origin, slot_live)

    def finish(self, g, state) -> None:
        """Every write a compaction covered, placed in positions: kept tokens at their
        positions, the rest dead, the counter advanced by the prompt length."""
        writes = [w for w in self.writes if w.node in state.static_writes]
        if not writes:
            return
        order = {n: i for i, n in enumerate(g.nodes)}
        with g.inserting_before(min((w.step for w in writes), key=order.__getitem__)):
            length = g.call_function(traced.seq_length, (state.first_visual,))
        for w in writes:
            w = static_write(w.node)
            origin, slot_live = state.static_writes.pop(w.node)
            which = cache_role(w.buffer)
            if which is None:
                raise Unsupported(f"cannot tell whether static cache {w.buffer.name} holds keys or values")
            w.step.args = (w.step.args[0], length, *w.step.args[2:])
            with g.inserting_before(w.node):
                full = g.call_function(ops.to_positional.default,
                                       (w.states, origin, slot_live, length, which == "value"))
                slots = g.call_function(traced.static_slots, (w.slots, length))
            w.node.args = (w.buffer, w.node.args[1], slots, full, *w.node.args[4:])

    # ---- a layer before a site --------------------------------------------------------------
    def evict(self, g, ev) -> None:
        """Every position is in the buffer already: the removed ones are marked dead in the value
        buffer, in place."""
        for w in self.writes:
            if cache_role(w.buffer) != "value":
                continue
            removed = ev.removed(before=ev.out)
            with g.inserting_before(ev.out):
                dead = g.call_function(traced.pad_positions, (removed, w.buffer))
                marked = g.call_function(ops.mark_dead.default, (w.buffer, dead, True, POSITIONAL))
                g.call_method("copy_", (w.buffer, marked))

    # ---- decode -----------------------------------------------------------------------------
    def decode_mask(self, g, sdpa) -> None:
        with g.inserting_before(sdpa):
            new = positional_mask(g, sdpa, self.values, None)
        set_sdpa_mask(sdpa, new, causal=False)


def positional_mask(g: fx.Graph, sdpa: fx.Node, values: fx.Node, slot_live: fx.Node | None,
                    origin: fx.Node | None = None, length: fx.Node | None = None) -> fx.Node:
    """``vtp::positional_mask`` for ``sdpa``, which reads the static buffer ``values``.

    A prefill call without a mask: transformers skips the mask for a causal prefill without
    padding (SDPA's top-left causal alignment is right, since slots are positions) and cuts
    the buffers to the first ``q_len`` slots. In a compacted layer ``q_len`` is the kept count,
    so the cut is widened to the prompt length ``length`` (every kept position is below it) and
    the queries get the causal mask of their positions ``origin``."""
    a = sdpa_args(sdpa)
    mask = a["attn_mask"]
    if not isinstance(mask, fx.Node):
        if not (a["is_causal"] and origin is not None):
            raise Unsupported("an attention call reads a static cache without a mask; its free "
                              "slots could not be told from dead ones")
        for arg in (a["key"], a["value"]):
            _widen_prompt_cut(arg, length)
        mask = g.call_function(traced.causal_positions, (origin, a["key"]))
    return g.call_function(ops.positional_mask.default, (mask, values, slot_live))


def _widen_prompt_cut(arg: fx.Node, length: fx.Node) -> None:
    """``buffer[:, :, :q_len]`` on the way from a static buffer to an attention argument ->
    ``buffer[:, :, :length]``."""
    n = arg
    for _ in range(8):
        if (n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[1], tuple)
                and len(n.args[1]) >= 3 and isinstance(n.args[1][2], slice)
                and n.args[1][2].start is None and n.args[1][2].step is None):
            idx = list(n.args[1])
            idx[2] = slice(None, length, None)
            n.args = (n.args[0], tuple(idx))
            return
        if op_name(n) not in PASS_THROUGH or not n.all_input_nodes:
            return
        n = n.all_input_nodes[0]


def unrestricted(mask):
    """The mask an earlier :func:`positional_mask` restricted (defined before the layer, which a
    recomputation of the layer's attention inputs needs; the score masks dead slots itself)."""
    while isinstance(mask, fx.Node) and mask.target is ops.positional_mask.default:
        mask = mask.args[0]
    if isinstance(mask, fx.Node) and mask.target is traced.causal_positions:
        return None          # the call had no mask (a causal prefill without padding)
    return mask


def prompt_slots(g: fx.Graph, key: fx.Node | None, mask, like: fx.Node, origin: fx.Node | None = None):
    """A static buffer's keys and the mask's key columns (either may be None) in the current
    layout, for a score: the prompt's ``L`` slots (``L`` from ``like`` ``[B, L]``), or, after an
    earlier compaction, the slots of the positions ``origin`` ``[B, W]`` lists."""
    if origin is not None:
        if key is not None:
            key = g.call_function(ops.gather_seq.default, (key, origin, 2, 0))
        if isinstance(mask, fx.Node):
            mask = g.call_function(traced.gather_columns, (mask, origin))
        return key, mask
    length = g.call_function(traced.seq_length, (like,))
    if key is not None:
        key = g.call_function(traced.first_slots, (key, length, 2))
    if isinstance(mask, fx.Node):
        mask = g.call_function(traced.first_slots, (mask, length, -1))
    return key, mask
