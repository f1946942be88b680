"""``explain``: what a config would prune where, without running the pruned model."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
import torch.fx as fx

from .config import PruneConfig
from .sites import RouteSite
from .passes.manager import PassManager
from .video import with_frame_tokens
from .report import SiteReport


@dataclasses.dataclass
class ExplainedSite:
    """One site: the compile-time report plus the tokens it keeps for these inputs."""
    name: str
    layer: int | None
    visual_count: int
    kept: int
    flops_saved: int
    flops_total: int
    kv_bytes_saved: int
    kept_visual_index: torch.Tensor   # [B, kept]: indices into each row's visual tokens (-1: none)
    reserve: int = 0                  # DSTP: kept_visual_index also lists the reserve (sorted)
    static_cache: bool = False        # a preallocated cache (no KV saving)


@dataclasses.dataclass
class Explanation:
    sites: list[ExplainedSite]
    reason: str | None = None        # why nothing would be pruned, if so

    def __str__(self) -> str:
        if not self.sites:
            return f"vtp: nothing pruned ({self.reason})"
        return "\n".join(SiteReport.line(s) for s in self.sites)


def explain(model: torch.nn.Module, inputs: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> Explanation:
    """Capture ``model(**inputs)``, plan ``options`` on it and compute each site's kept tokens.

    Runs the unpruned model up to the last scoring step only; nothing is compiled for speed.

    >>> ex = vtp_compile.explain(model, inputs, {"method": "fastv", "budget": 8})
    >>> ex.sites[0].kept_visual_index.shape   # [batch, 8]
    """
    from .graph.fx_utils import Unsupported

    # the compiled path reads LLaVA-OneVision's / NeXT-Video's frame_tokens from the config too
    cfg = with_frame_tokens(PruneConfig.from_options(options), getattr(model, "config", None))
    planned, reasons = [], []

    def plan_only(gm, example_inputs, **kw):
        manager = PassManager(cfg)
        try:
            work, report = manager(gm, example_inputs)
            if report.phase == "prefill" and manager.state is not None:
                planned.append((manager, report, list(example_inputs)))
            if report.phase == "splice":   # records the spliced embeddings for the decoder graph
                return work.forward
        except Unsupported as why:
            reasons.append(str(why))
        return gm.forward  # the capture itself runs unpruned

    from . import vision_context
    from .methods.registry import get_method
    temporary = get_method(cfg.method).needs_vision(cfg) and not vision_context.is_attached(model)
    if temporary:   # the method reads the vision tower's internals: attach for this capture
        vision_context.attach(model, cfg.params.get("vision_layer"))
    scalars = torch._dynamo.config.capture_scalar_outputs
    with torch.no_grad():
        model(**inputs)   # transformers installs its output hooks on a first call, untraceably
        torch._dynamo.reset()
        try:
            # one prefill graph: without it the placeholder-count check splits the prefill
            torch._dynamo.config.capture_scalar_outputs = True
            torch.compile(model, backend=plan_only)(**inputs)
        finally:
            torch._dynamo.config.capture_scalar_outputs = scalars
            torch._dynamo.reset()
            if temporary:
                vision_context.detach(model)
    if not planned:
        return Explanation([], "; ".join(reasons) or "no prefill graph with a visual splice")
    manager, report, ex = planned[0]
    idx = _run_selection(manager, ex)
    return Explanation([
        ExplainedSite(r.name, r.layer, r.visual_count, r.kept, r.flops_saved, r.flops_total,
                      r.kv_bytes_saved, vi, r.reserve, r.static_cache) for r, vi in zip(report.sites, idx)])


def _impure(n: fx.Node) -> bool:
    """Nodes dead-code elimination must keep: side effects, and functorch's vmap nesting
    calls (transformers builds some masks with vmap; dropping a decrement breaks the rest)."""
    if n.is_impure():
        return True
    return n.op == "call_function" and "functorch" in getattr(n.target, "__module__", "") \
        or "vmap" in getattr(n.target, "__name__", "")


def _run_selection(manager: PassManager, example_inputs) -> list[torch.Tensor]:
    """Per site, ``[B, kept]`` indices into each row's visual tokens (rows with fewer kept
    tokens are padded with -1)."""
    state = manager.state
    g: fx.Graph = state.visual_mask.graph
    out = next(n for n in reversed(g.nodes) if n.op == "output")
    picks = [x for _, idx, live, _ in state.keep_nodes for x in (idx, live)]
    out.args = ((state.first_visual, *picks),)
    g.eliminate_dead_code(is_impure_node=_impure)
    gm = fx.GraphModule(out.graph.owning_module, g)
    with torch.no_grad():
        vis, *flat = gm(*example_inputs)
    results, base = [], None
    rank = vis.long().cumsum(1) - 1          # visual index of each original position
    for (site, _, _, _), idx, live in zip(state.keep_nodes, flat[0::2], flat[1::2]):
        pos = idx if base is None else torch.gather(base, 1, idx)
        if not isinstance(site, RouteSite):  # later sites index into this compacted sequence
            base = pos
        keep = live & torch.gather(vis, 1, pos)
        vi = torch.gather(rank, 1, pos)
        rows = [vi[b][keep[b]] for b in range(vi.shape[0])]
        width = max((len(r) for r in rows), default=0)
        results.append(torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=-1)
                                    for r in rows]) if rows else torch.zeros(0, 0, dtype=torch.long))
    return results
