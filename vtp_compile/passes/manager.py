"""The pass manager: analyses one graph, runs the passes that apply in order, and reports what
each inserted. The caller's graph is never modified."""
from __future__ import annotations

import hashlib
import logging
from collections import Counter

import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from ..config import PruneConfig
from ..graph.fx_utils import Unsupported, op_name, refresh_meta, stamp_meta
from ..graph.vlm_graph import VLMGraph
from ..methods.registry import get_method
from ..report import GraphReport, PassReport
from . import debug, kv
from .base import GraphPass, PassContext
from .pipeline import PASSES

log = logging.getLogger("vtp_compile")


class PassManager:
    """Applies a config's sites to a copy of a graph: ``PassManager(cfg)(gm, example_inputs)``
    returns ``(rewritten copy, GraphReport)``."""

    def __init__(self, cfg: PruneConfig, passes: tuple[GraphPass, ...] = PASSES):
        self.cfg = cfg
        self.method = get_method(cfg.method)
        self.passes = passes
        self.state = None     # the CompactState of the last prefill graph (for explain)
        self.current = None   # the pass running now (named when it fails)
        # runtime state (DSTP) is keyed by the configuration
        self.key = f"{cfg.method}|{cfg.keep}|{sorted(cfg.params.items())}"

    def cache_key(self) -> str:
        """Changes when the configuration or any pass's code does."""
        parts = [self.key, *(p.cache_key() for p in self.passes)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def __call__(self, gm: fx.GraphModule, example_inputs) -> tuple[fx.GraphModule, GraphReport]:
        self.current = "analysis"
        work = _clone(gm)
        stamp_meta(work)
        vlm = VLMGraph.match(work)
        layouts = kv.analyse(vlm)
        report = GraphReport(vlm.phase, layouts=dict(Counter(lay.kind for lay in layouts)))
        sites = self.method.sites(self.cfg, vlm.num_layers) if vlm.phase != "splice" else []
        ctx = PassContext(work, vlm, layouts, self.cfg, sites, list(example_inputs), report, self.key)
        dump = debug.Dump.open(vlm.phase)
        for p in self.passes:
            if not p.applies(ctx):
                continue
            self.current = p.name
            before = set(work.graph.nodes)
            dump.write(p.name, "before", work)
            p(ctx)
            report.passes.append(PassReport(p.name, dict(Counter(
                op_name(n) or n.op for n in work.graph.nodes if n not in before))))
            dump.write(p.name, "after", work)
        self.state = ctx.state
        self.current = "shape propagation"
        work.recompile()
        try:
            refresh_meta(work, example_inputs)
        except GuardOnDataDependentSymNode as e:
            if vlm.phase != "prefill":
                raise
            # nothing is cached yet: the prefill (and so every decode step) can run unpruned
            raise Unsupported(f"the rewritten prefill's shapes cannot be propagated ({method_sites(report)}"
                              f" on this graph: {str(e).splitlines()[0]})") from e
        dump.finish(report)
        self.current = None
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
