"""vtp's graph passes, in the order :class:`~vtp_compile.passes.manager.PassManager` runs them.

Each is a :class:`~vtp_compile.passes.base.GraphPass` over one mechanism module:

========================  ========  ==========================================================
pass                      phase     what it does
========================  ========  ==========================================================
``record_splice``         splice    records the spliced embeddings for the decoder graph
``compact``               prefill   each site but routes: select, run later layers on the kept
                                    tokens, evict earlier layers' caches (:mod:`.compact`);
                                    DSTP's reserve (:mod:`.shift`)
``finish_caches``         prefill   cache writes placed after the last site (:mod:`.kv`)
``record_decode_select``  prefill   DyCoke's stage 2: the cache's visual columns recorded
                                    (:mod:`.decode_select`)
``route``                 prefill   ALVTS: per-layer routing and reintegration (:mod:`.route`)
``strip_vision_context``  prefill   the vision internals' carrier leaves the graph
``decode_masks``          decode    every attention call reads its layer's dead slots
``shift``                 decode    DSTP: active/reserve columns, re-scored each step
``decode_select``         decode    DyCoke's stage 2: the visual columns later layers read,
                                    re-picked each step (:mod:`.decode_select`)
========================  ========  ==========================================================
"""
from __future__ import annotations

from ..graph.fx_utils import refresh_meta
from ..sites import DecodeSite, ReserveSite, RouteSite
from . import compact, decode_select, route, shift, vision_args
from .accounting import Accounting
from .base import GraphPass, PassContext


class RecordSplice(GraphPass):
    name = "record_splice"
    phases = ("splice",)

    def __call__(self, ctx: PassContext) -> None:
        compact.record_splice(ctx.vlm)


class CompactSites(GraphPass):
    name = "compact"

    def __call__(self, ctx: PassContext) -> None:
        vlm, sites = ctx.vlm, ctx.sites
        ctx.state = compact.init_state(vlm, ctx.layouts)
        ctx.accounting = Accounting(vlm, ctx.layouts.preallocated)
        for site in sites:
            ctx.layouts.check_site(site)
        if any(isinstance(s, ReserveSite) for s in sites):
            shift.check_layout(vlm, ctx.layouts)
        if ctx.layouts.preallocated and sum(not isinstance(s, (RouteSite, DecodeSite)) for s in sites) > 1:
            # a static cache's writes are placed after the last site (FinishCaches); until then
            # they write the compacted states at the prompt's positions, which the fake
            # propagation between sites accepts only while the width is data
            ctx.state.length = None
        for i, site in enumerate(sites):
            if isinstance(site, (RouteSite, DecodeSite)):
                continue
            if i:   # a later site reads shapes of nodes the earlier one inserted
                ctx.gm.recompile()
                refresh_meta(ctx.gm, ctx.example_inputs)
            nodes = compact.apply_site(vlm, site, ctx.state)
            if isinstance(site, ReserveSite):
                shift.apply_reserve(vlm, site, nodes, ctx.key)
            ctx.report.sites.append(ctx.accounting.site(site))


class FinishCaches(GraphPass):
    name = "finish_caches"

    def __call__(self, ctx: PassContext) -> None:
        ctx.layouts.finish(ctx.gm.graph, ctx.state)


class RecordDecodeSelect(GraphPass):
    name = "record_decode_select"

    def applies(self, ctx: PassContext) -> bool:
        return super().applies(ctx) and any(isinstance(s, DecodeSite) for s in ctx.sites)

    def __call__(self, ctx: PassContext) -> None:
        for site in ctx.sites:
            if isinstance(site, DecodeSite):
                decode_select.record(ctx.vlm, site, ctx.state, ctx.layouts, ctx.key)


class RouteSites(GraphPass):
    name = "route"

    def applies(self, ctx: PassContext) -> bool:
        return super().applies(ctx) and any(isinstance(s, RouteSite) for s in ctx.sites)

    def __call__(self, ctx: PassContext) -> None:
        routes = [s for s in ctx.sites if isinstance(s, RouteSite)]
        route.apply_routes(ctx.vlm, routes, ctx.state, ctx.example_inputs)
        for site in routes:
            ctx.report.sites.append(ctx.accounting.site(site))


class StripVisionContext(GraphPass):
    name = "strip_vision_context"

    def __call__(self, ctx: PassContext) -> None:
        vision_args.strip_vision_context(ctx.vlm)


class DecodeMasks(GraphPass):
    name = "decode_masks"
    phases = ("decode",)

    def __call__(self, ctx: PassContext) -> None:
        g = ctx.gm.graph
        for lv in ctx.vlm.attention_layers:
            ctx.layouts[lv.index].decode_mask(g, lv.sdpa)
        g.lint()
        ctx.report.decode_masks = len(ctx.vlm.attention_layers)


class ShiftDecode(GraphPass):
    name = "shift"
    phases = ("decode",)

    def applies(self, ctx: PassContext) -> bool:
        return super().applies(ctx) and any(isinstance(s, ReserveSite) for s in ctx.sites)

    def __call__(self, ctx: PassContext) -> None:
        for site in ctx.sites:
            if isinstance(site, ReserveSite):
                ctx.layouts.check_site(site)
                shift.apply_shift(ctx.vlm, site, ctx.key, ctx.layouts)


class DecodeSelect(GraphPass):
    name = "decode_select"
    phases = ("decode",)

    def applies(self, ctx: PassContext) -> bool:
        return super().applies(ctx) and any(isinstance(s, DecodeSite) for s in ctx.sites)

    def __call__(self, ctx: PassContext) -> None:
        for site in ctx.sites:
            if isinstance(site, DecodeSite):
                decode_select.apply(ctx.vlm, site, ctx.layouts, ctx.key)


PASSES: tuple[GraphPass, ...] = (RecordSplice(), CompactSites(), FinishCaches(), RecordDecodeSelect(),
                                 RouteSites(), StripVisionContext(), DecodeMasks(), ShiftDecode(),
                                 DecodeSelect())
