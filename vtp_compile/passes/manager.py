"""The pass manager: owns the order of passes for one graph and the report of what they did."""
from __future__ import annotations

import dataclasses
import logging

import torch.fx as fx

from ..config import PruneConfig
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from ..graph.fx_utils import StaticCacheUnsupported, Unsupported, hint, refresh_meta, stamp_meta, tensor_val
from ..graph.vlm_graph import VLMGraph
from ..methods.registry import get_method
from ..sites import EncoderSite, ReserveSite, RouteSite
from . import compact, decode, flops, route, shift, static_cache, vision_args

log = logging.getLogger("vtp_compile")


@dataclasses.dataclass
class SiteReport:
    """One pruning site as compiled (sizes from the example inputs of the compile)."""
    name: str
    layer: int | None          # None for an encoder site (before layer 0)
    visual_count: int
    kept: int
    flops_saved: int
    flops_total: int
    kv_bytes_saved: int
    reserve: int = 0           # DSTP: tokens carried (keys/values kept) but not attended to
    static_cache: bool = False  # a preallocated cache: its size does not change (kv_bytes_saved 0)

    def line(self) -> str:
        where = "encoder (before layer 0)" if self.layer is None else f"layer {self.layer}"
        pct = 100.0 * self.flops_saved / max(1, self.flops_total)
        res = f" (+{self.reserve} reserve)" if self.reserve else ""
        kv = ("static KV cache (preallocated: same size, removed slots masked)" if self.static_cache
              else f"KV cache -{self.kv_bytes_saved / 1024:.1f} KiB")
        return (f"vtp: {self.name} at {where}: visual tokens {self.visual_count} -> {self.kept}{res}, "
                f"~{self.flops_saved / 1e9:.3g} GFLOPs saved ({pct:.1f}% of the decoder), {kv}")


@dataclasses.dataclass
class GraphReport:
    phase: str
    sites: list[SiteReport] = dataclasses.field(default_factory=list)
    decode_masks: int = 0       # decode graphs: attention calls whose mask reads the cache
    skipped: str | None = None


REPORTS: list[GraphReport] = []   # every graph this process compiled with vtp, in order


class PassManager:
    """Applies a config's sites to a graph copy; the caller's graph is never modified."""

    def __init__(self, cfg: PruneConfig):
        self.cfg = cfg
        self.method = get_method(cfg.method)
        self.state = None  # the CompactState of the last prefill graph (for explain)
        # runtime state (DSTP) is keyed by the configuration
        self.key = f"{cfg.method}|{cfg.keep}|{sorted(cfg.params.items())}"

    def __call__(self, gm: fx.GraphModule, example_inputs) -> tuple[fx.GraphModule, GraphReport]:
        work = _clone(gm)
        stamp_meta(work)
        vlm = VLMGraph.match(work)
        report = GraphReport(vlm.phase)
        static = static_cache.has_static_cache(work.graph)
        if static:      # prefill and decode: the static-cache forms vtp covers
            static_cache.check_static(work.graph)
        if vlm.phase == "splice":
            compact.record_splice(vlm)
        elif vlm.phase == "prefill":
            costs = [flops.layer_cost(lv, vlm.tp) for lv in vlm.layers]
            sites = self.method.sites(self.cfg, vlm.num_layers)
            state = self.state = compact.init_state(vlm)
            lengths, elem = _sizes(vlm)
            routes = [s for s in sites if isinstance(s, RouteSite)]
            if static and any(isinstance(s, (ReserveSite, RouteSite)) for s in sites):
                raise StaticCacheUnsupported(
                    f"{self.cfg.method} with a static KV cache (cache_implementation='static'): "
                    "its per-layer routing or reserve addresses the dynamic cache's compacted "
                    "layout; use the default dynamic cache to prune with it")
            if any(isinstance(s, ReserveSite) for s in sites):
                shift.check_layout(vlm)
            for i, site in enumerate(sites):
                if isinstance(site, RouteSite):
                    continue
                if i:   # a later site reads shapes of nodes the earlier one inserted
                    work.recompile()
                    refresh_meta(work, example_inputs)
                nodes = compact.apply_site(vlm, site, state)
                if isinstance(site, ReserveSite):
                    shift.apply_reserve(vlm, site, nodes, self.key)
                report.sites.append(_site_report(site, vlm, costs, lengths, elem, static))
            static_cache.place_writes(vlm.gm.graph, state)
            if routes:
                route.apply_routes(vlm, routes, state, example_inputs)
                for site in routes:
                    report.sites.append(_site_report(site, vlm, costs, lengths, elem, static))
            vision_args.strip_vision_context(vlm)
        else:
            report.decode_masks = decode.apply_decode(vlm)
            for site in self.method.sites(self.cfg, vlm.num_layers):
                if isinstance(site, ReserveSite):
                    shift.apply_shift(vlm, site, self.key)
        work.recompile()
        try:
            refresh_meta(work, example_inputs)
        except GuardOnDataDependentSymNode as e:
            if vlm.phase != "prefill":
                raise
            # nothing is cached yet: the prefill (and so every decode step) can run unpruned
            raise Unsupported(f"the rewritten prefill's shapes cannot be propagated ({method_sites(report)}"
                              f" on this graph: {str(e).splitlines()[0]})") from e
        for s in report.sites:
            log.info(s.line())
        return work, report


def method_sites(report) -> str:
    return "sites " + ", ".join(s.name for s in report.sites) if report.sites else "no sites"


def _clone(gm: fx.GraphModule) -> fx.GraphModule:
    g = fx.Graph()
    out = g.graph_copy(gm.graph, {})
    g.output(out)
    new = fx.GraphModule(gm, g)
    new.meta.update(getattr(gm, "meta", {}))
    return new


def _sizes(vlm: VLMGraph):
    h = tensor_val(vlm.layers[0].entry)
    B, L = hint(h.shape[0]), hint(h.shape[1])
    if vlm.features is not None:
        f = tensor_val(vlm.features)
        V = hint(f.numel()) // hint(f.shape[-1]) // B
    else:   # spliced in another graph: the recorded mask of the first call, if any
        from ..kernels import splice
        V = int(splice._RECORD[1].sum()) // B if splice._RECORD is not None else 0
    return {"B": B, "L": L, "V": V, "cur_V": V, "layer_len": [L] * vlm.num_layers}, h.element_size()


def _site_report(site, vlm, costs, sizes, elem, static: bool) -> SiteReport:
    K = getattr(site, "layer", 0)
    V = sizes["cur_V"]
    kept = min(int(site.keep.count(V, sizes["V"])), V)
    reserve = 0
    if isinstance(site, ReserveSite):
        reserve = min(kept if site.reserve is None else site.reserve, V - kept)
    before = list(sizes["layer_len"])
    removed = V - kept - reserve
    routed = isinstance(site, RouteSite)
    for i in range(K, K + 1 if routed else len(before)):
        sizes["layer_len"][i] -= removed
    if not routed:          # a routed layer hands the full stream to the next one
        sizes["cur_V"] = kept + reserve
    B = sizes["B"]
    total = flops.stack_flops(costs, [sizes["L"]] * len(costs)) * B
    saved = (flops.stack_flops(costs, before) - flops.stack_flops(costs, sizes["layer_len"])) * B
    # caches: a full-stack site evicts its tokens from every layer's cache (earlier layers
    # included); a routed layer from its own and the not yet counted earlier ones
    layers = set(range(len(costs)))
    if routed:
        layers = set(range(K + 1)) - sizes.setdefault("kv_counted", set())
        sizes["kv_counted"].update(layers)
    kv = sum(costs[i].kv_width for i in layers) * removed * elem * B
    return SiteReport(site.name, None if isinstance(site, EncoderSite) else K, V, kept, saved,
                      total, 0 if static else kv, reserve, static)


def lower(gm: fx.GraphModule, example_inputs, cfg: PruneConfig):
    """Hand the (rewritten) graph to the inner backend: Inductor with the mode's and the user's
    config patches, another registered backend by name, or the user's callable."""
    inner = cfg.inner_backend
    if callable(inner):
        return inner(gm, example_inputs)
    if inner == "eager":
        return gm.forward
    if inner == "inductor":
        import torch._inductor
        from torch._inductor.compile_fx import compile_fx
        from ..kernels.lowering import decompositions
        patches = dict(torch._inductor.list_mode_options(cfg.mode)) if cfg.mode != "default" else {}
        patches.update(cfg.inductor)
        # the vtp ops that are plain tensor math are traced through (fused, generated code)
        with torch._inductor.config.patch(patches):
            decomps = decompositions()
        return compile_fx(gm, example_inputs, config_patches=patches, decompositions=decomps)
    from torch._dynamo import lookup_backend
    return lookup_backend(inner)(gm, example_inputs)
