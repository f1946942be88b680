"""What a site saves, from the sizes of the compile's example inputs: FLOPs of the decoder and
bytes of KV cache (reports and logs; nothing here changes a graph)."""
from __future__ import annotations

from ..graph.fx_utils import hint, tensor_val
from ..graph.vlm_graph import VLMGraph
from ..report import SiteReport
from ..sites import EncoderSite, ReserveSite, RouteSite
from . import flops


class Accounting:
    """Sizes as the sites of one prefill graph leave them, site after site."""

    def __init__(self, vlm: VLMGraph, preallocated: bool):
        self.costs = [flops.layer_cost(lv, vlm.tp) for lv in vlm.layers]
        self.preallocated = preallocated
        h = tensor_val(vlm.layers[0].entry)
        self.B, self.L = hint(h.shape[0]), hint(h.shape[1])
        self.elem = h.element_size()
        from ..kernels import splice
        recorded = int(splice._RECORD[1].sum()) if splice._RECORD is not None else 0
        if vlm.features is not None:     # every splice of the chain (images, then videos)
            V = recorded if vlm.spliced_before is not None else 0   # and an earlier graph's
            for s in vlm.splices:
                f = tensor_val(s.args[2])
                V += hint(f.numel()) // hint(f.shape[-1])
            V //= self.B
        else:   # spliced in another graph: the recorded mask of the first call, if any
            V = recorded // self.B
        self.V = self.cur_V = V
        self.layer_len = [self.L] * vlm.num_layers
        self.kv_counted: set = set()

    def site(self, site) -> SiteReport:
        """The report of ``site``, applied after the ones already accounted."""
        K = getattr(site, "layer", 0)
        V = self.cur_V
        kept = min(int(site.keep.count(V, self.V)), V)
        reserve = 0
        if isinstance(site, ReserveSite):
            reserve = min(kept if site.reserve is None else site.reserve, V - kept)
        before = list(self.layer_len)
        removed = V - kept - reserve
        routed = isinstance(site, RouteSite)
        for i in range(K, K + 1 if routed else len(before)):
            self.layer_len[i] -= removed
        if not routed:          # a routed layer hands the full stream to the next one
            self.cur_V = kept + reserve
        costs, B = self.costs, self.B
        total = flops.stack_flops(costs, [self.L] * len(costs)) * B
        saved = (flops.stack_flops(costs, before) - flops.stack_flops(costs, self.layer_len)) * B
        # caches: a full-stack site evicts its tokens from every layer's cache (earlier layers
        # included); a routed layer from its own and the not yet counted earlier ones
        layers = set(range(len(costs)))
        if routed:
            layers = set(range(K + 1)) - self.kv_counted
            self.kv_counted.update(layers)
        kv = sum(costs[i].kv_width for i in layers) * removed * self.elem * B
        return SiteReport(site.name, None if isinstance(site, EncoderSite) else K, V, kept, saved,
                          total, 0 if self.preallocated else kv, reserve, self.preallocated)
