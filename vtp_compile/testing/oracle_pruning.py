"""What the mask oracle keeps: :class:`Pruning` (a method and its knobs, written from
METHODS.md) and its :class:`Stage` schedule (where each site selects and how many it keeps).
Shares no code with the rewrite; :mod:`.oracle_mask` runs it."""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Callable

from . import oracle_baselines


@dataclasses.dataclass(frozen=True)
class Pruning:
    """What to keep: ``method`` in {"fastv", "random", "divprune", "acgr", "pdrop", "dart",
    "sparsevlm"}; DCP-Prune's knobs; PDrop's stage ``layers`` (None: the paper's quarters of the
    depth), SparseVLM's scoring ``layers`` (None: 2, 6, 15 of 32 scaled); ``dstp``: DSTP around
    the method."""
    method: str
    budget: int | None = None
    ratio: float | None = None
    layer: int = 2
    seed: int = 0
    site: str = "layer"
    tau: float = 0.3
    m: int = 3
    iters: int = 5
    merge: bool = True
    layers: tuple | None = None
    pivots: int = 4
    dstp: tuple | None = None     # DSTP around this method: (reserve or None, reserve_by, tau)
    recycle: bool = False         # SparseVLM v1's recycling
    chain: tuple = ()             # method "chain": the stages' Prunings, in order
    theta: float = 0.5            # CDPruner's relevance weight
    contextual: float = 0.15625   # VisionZip: contextual fraction of the kept tokens
    score: str = "cls"            # VisionZip: dominant score, "cls" or "received"
    vision_layer: int | None = None   # VisionZip (and Nüwa on Qwen towers): the vision layer
                                      # read (None: -2, the last block on Qwen towers)
    rank: int | tuple = 3         # ALVTS: the selector's rank, or ((layer, rank), ...) per layer
    anchors: int | None = None    # Nüwa: stage 1's anchors (None: ceil(1.75 x budget))
    region: int = 2               # Nüwa: block side
    distance: float = 0.265       # Nüwa: alignment radius
    pillars: float = 0.45         # Nüwa: fraction of anchors left as they are
    per_frame: str = "off"        # the row's count spread over frames: "even", "unique" (VidCom2's
                                  # default) or "off" (oracle_video.apportion)
    min_per_frame: int = 1
    cuts: int = 7                 # FastVID: DySeg's always-cut count (``tau``: its threshold, 0.9)
    context: float = 0.4          # FastVID: context share of the kept tokens
    anchor_every: int = 4
    beta: float = 0.6

    def n_keep(self, V: int) -> int:
        if self.budget is not None:
            return min(self.budget, V)
        r = Fraction(self.ratio if self.ratio is not None else Fraction(1, 9)).limit_denominator(10_000)
        return min(V, math.ceil(V * r))

    @property
    def K(self) -> int:
        layer_site = self.method in ("fastv", "dart") or (self.method == "acgr" and self.site == "layer")
        return self.layer if layer_site else 0

    def stages(self, num_layers: int) -> list["Stage"]:
        """The sites in order: where each selects and how many visual tokens it keeps."""
        if self.method == "alvts":    # routes per layer: _Run.route, not stages
            return []
        if self.method == "nuwa":     # anchors on the spliced features, then FastV at `layer`
            def n_anchors(V_now, V):
                if self.anchors is not None:
                    return min(V_now, self.anchors)
                if self.budget is not None:
                    return min(V_now, math.ceil(self.budget * 7 / 4))
                r = min(Fraction(1), Fraction(self.ratio).limit_denominator(10_000) * Fraction(7, 4))
                return min(V_now, math.ceil(V_now * r))
            return [Stage("nuwa", 0, False, n_anchors),
                    Stage("fastv", self.layer, False, lambda V_now, V: self.n_keep(V_now))]
        if self.method == "chain":
            return [dataclasses.replace(st, p=sub) for sub in self.chain for st in sub.stages(num_layers)]
        if self.method == "pdrop":
            layers = self.layers or oracle_baselines.pdrop_default_layers(num_layers)
            return [Stage("pdrop", layer, True,
                          lambda V_now, V, s=s: oracle_baselines.pdrop_count(
                              V, s, layers, num_layers, self.budget, self.ratio))
                    for s, layer in enumerate(layers, start=1)]
        if self.method == "sparsevlm":
            layers = self.layers or oracle_baselines.sparsevlm_layers(num_layers)
            return [Stage("sparsevlm", layer + 1, False,
                          lambda V_now, V, s=s: oracle_baselines.sparsevlm_count(V, s, self.budget, self.ratio))
                    for s, layer in enumerate(layers)]
        return [Stage(self.method, self.K, False, lambda V_now, V: self.n_keep(V_now))]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One site: ``rule`` selects before layer ``layer`` (0: on the input embedding) from the
    visual tokens still kept; ``own``: with that layer's own q/k; ``count(V_now, V)``: how many
    it keeps of ``V_now`` left (``V``: the row's visual count)."""
    rule: str
    layer: int
    own: bool
    count: Callable
    p: "Pruning | None" = None    # the stage's own knobs (chains); None: the run's
