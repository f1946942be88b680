"""``KVLayout``: what one decoder layer's KV cache holds after a pruned prefill.

The analysis (:func:`vtp_compile.passes.kv.analyse`) decides once per layer which layout its
cache has; the site code (:mod:`vtp_compile.passes.compact`) asks the layout for every
cache-dependent edit and never branches on the cache kind. Each layout owns:

* **mask restriction** in a compacted layer (:meth:`restrict`): no live query sees a dead slot;
* **keys for a score** (:meth:`score_keys`, :meth:`prompt_mask`): the layer's keys and mask
  columns in the layout the earlier sites left;
* **what leaves a compacted layer** (:meth:`leave_cache`, :meth:`leave_write`,
  :meth:`leave_slice`): the cache as the layout stores it, dead slots marked;
* **eviction** of a layer before a site (:meth:`evict`): it caches only what the later layers
  keep;
* **the decode mask** (:meth:`decode_mask`): a decode step's attention reads the dead slots back.

The dead-slot marker contract (what a dead key and value hold, and how a decode step tells the
compacted from the positional layout) lives in :mod:`vtp_compile.kernels.cache`.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.fx as fx

from ...graph.fx_utils import Unsupported, sdpa_args, set_sdpa_mask
from ...graph.vlm_graph import LayerView
from .. import traced

ops = torch.ops.vtp


class KVLayout:
    """The layout of one layer's cache. Subclasses override what their cache does differently;
    the defaults are those of a layer whose keys are the current sequence (no stored cache)."""
    kind: ClassVar[str] = "none"
    # the cache is preallocated (its size never changes: pruning saves no cache memory)
    preallocated: ClassVar[bool] = False
    # the cache holds the compacted layout (kept tokens, then dead slots) that per-layer masks
    # addressing cache columns (DSTP's active/reserve columns) assume
    compacted: ClassVar[bool] = True

    def __init__(self, lv: LayerView):
        self.lv = lv

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer {self.lv.index})"

    # ---- checks ---------------------------------------------------------------------------------
    def check_site(self, site) -> None:
        """Raise :class:`Unsupported` when this layout cannot hold what ``site`` does."""

    # ---- scores -------------------------------------------------------------------------------
    def prompt_mask(self, g: fx.Graph, mask: fx.Node, visual: fx.Node) -> fx.Node:
        """The first layer's mask with its key columns over the prompt (``visual`` ``[B, L]``)."""
        return mask

    def score_keys(self, g: fx.Graph, key: fx.Node, mask, state, own_attention: bool):
        """``(key, mask)`` of this layer's attention as a score reads them: columns in the layout
        the earlier sites left (``state``: :class:`~vtp_compile.passes.compact.CompactState`)."""
        return key, mask

    def stand_ins(self) -> dict:
        """``{buffer: states}`` for buffers written in place that a recomputation of the layer's
        attention inputs reads (the states stand in for the buffer)."""
        return {}

    # ---- a compacted layer ------------------------------------------------------------------
    def restrict(self, g: fx.Graph, sdpa: fx.Node, slot_live: fx.Node, origin: fx.Node,
                 full_len: fx.Node, made: dict) -> None:
        """Give ``sdpa`` (in a compacted layer) a mask under which no live query attends to a
        dead slot; ``made`` shares the restricted masks between calls of one region. Causal calls
        without a mask need nothing: dead slots come after every live one."""
        a = sdpa_args(sdpa)
        m = a["attn_mask"]
        if m is None and a["is_causal"]:
            return
        if m not in made:
            with g.inserting_before(sdpa):
                made[m] = g.call_function(ops.live_mask.default, (m, slot_live))
        set_sdpa_mask(sdpa, made[m], causal=False)

    def leave_cache(self, g: fx.Graph, n: fx.Node, slot_live: fx.Node, state, out: fx.Node) -> bool:
        """A cache tensor ``n`` of a compacted layer that leaves the graph: store it as this
        layout does; False when ``n`` is not such a tensor."""
        return False

    def leave_write(self, n: fx.Node, origin: fx.Node, slot_live: fx.Node, state) -> None:
        """An in-place cache write ``n`` inside a compacted layer."""
        raise Unsupported(f"{n.name} writes a cache in place, which a {self.kind} layout does not do")

    def leave_slice(self, g: fx.Graph, sl: fx.Node, x: fx.Node, dim: int, origin: fx.Node,
                    slot_live: fx.Node, state) -> None:
        """A slice ``sl`` of ``x`` along a sequence dimension inside a compacted layer."""
        raise Unsupported(f"slice {sl.name} involves the sequence dimension")

    def finish(self, g: fx.Graph, state) -> None:
        """After every site: edits that need the last compaction covering this layer."""

    # ---- a layer before a site --------------------------------------------------------------
    def evict(self, g: fx.Graph, eviction: "Eviction") -> None:
        """This layer ran on every token; from now on it caches only what the later layers keep."""

    # ---- decode -----------------------------------------------------------------------------
    def decode_mask(self, g: fx.Graph, sdpa: fx.Node) -> None:
        """A decode step: give ``sdpa`` the mask that reads this layer's dead slots back."""
        raise Unsupported(f"layer {self.lv.index} reads no cache in this decode graph")


class NoCache(KVLayout):
    """An attention layer whose keys are the current sequence and which stores no cache
    (``use_cache=False``)."""
    kind = "no cache"


class TokenMixing(KVLayout):
    """A layer that mixes tokens without attention (linear attention, a convolution: hybrid
    models). Its state is not a KV cache; the layer is never compacted."""
    kind = "token-mixing state"


class Eviction:
    """One site's eviction of the layers before it: the selection, and the positions it removed
    (built once, on first use, before ``before``)."""

    def __init__(self, g: fx.Graph, idx: fx.Node, slot_live: fx.Node, origin: fx.Node, state):
        self.g, self.idx, self.slot_live, self.origin, self.state = g, idx, slot_live, origin, state
        self.out = next(n for n in reversed(g.nodes) if n.op == "output")
        self._removed = None

    def removed(self, before: fx.Node) -> fx.Node:
        """``[B, L]`` bool: prompt positions the selection removed."""
        if self._removed is None:
            with self.g.inserting_before(before):
                self._removed = self.g.call_function(
                    traced.removed_positions, (self.origin, self.slot_live, self.state.first_visual))
        return self._removed


class Layouts:
    """Every layer's :class:`KVLayout`, by layer index and by the nodes each layer owns."""

    def __init__(self, layouts: list[KVLayout]):
        self.by_layer = layouts
        self._owner = {n: lay for lay in layouts for n in lay.lv.nodes}

    def __getitem__(self, layer: int) -> KVLayout:
        return self.by_layer[layer]

    def __iter__(self):
        return iter(self.by_layer)

    def of(self, n: fx.Node) -> KVLayout:
        """The layout of the layer that owns node ``n``."""
        lay = self._owner.get(n)
        if lay is None:
            raise Unsupported(f"{n.name} belongs to no decoder layer")
        return lay

    @property
    def preallocated(self) -> bool:
        return any(lay.preallocated for lay in self.by_layer)

    def check_site(self, site) -> None:
        for lay in self.by_layer:
            lay.check_site(site)

    def evict_before(self, K: int, idx: fx.Node, slot_live: fx.Node, origin: fx.Node, state,
                     final: bool, g: fx.Graph) -> None:
        """Layers before layer ``K`` cache only the kept tokens too (an earlier site may already
        have decided what a layer caches: ``state.fixed``)."""
        ev = Eviction(g, idx, slot_live, origin, state)
        for lay in self.by_layer[:K]:
            if lay.lv.index in state.fixed:
                continue
            if final:
                state.fixed.add(lay.lv.index)
            lay.evict(g, ev)

    def finish(self, g: fx.Graph, state) -> None:
        for lay in self.by_layer:
            lay.finish(g, state)
