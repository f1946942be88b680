"""Per-layer routing: the mechanism behind ``RouteSite`` (ALVTS).

Each routed layer is its own compaction region: the selector picks the visual tokens that go
through the layer, :func:`compact.apply_site` gathers them (and the layer's rotary tables and
mask), and the layer's output is scattered back into its full-length input, so skipped tokens
pass through unchanged. Each layer's KV cache keeps what that layer processed; with the same
kept count in every routed layer all caches have the same length, which decode graphs need
(see the README's design decisions).

The selector is built once, here, from the layer's own q/k projection weights and input-norm
weight (real tensors from the example inputs), calibrated on the hidden states the example
inputs produce at that layer.
"""
from __future__ import annotations

import logging

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensor

from ..graph import tp
from ..graph.fx_utils import Unsupported, hint, sdpa_args, tensor_val
from ..graph.vlm_graph import VLMGraph
from ..sites import RouteSite
from . import compact

log = logging.getLogger("vtp_compile")
LINEARS = (torch._C._nn.linear, torch.nn.functional.linear)


def apply_routes(vlm: VLMGraph, sites: list[RouteSite], state, example_inputs) -> list:
    gm = vlm.gm
    real = _placeholder_values(gm, example_inputs)
    calib = _calibration(gm, vlm, sites, state, example_inputs)
    results = []
    for site in sorted(sites, key=lambda s: s.layer):
        lv = vlm.layers[site.layer]
        wq, wk, w_norm, bq = _weights(lv, real)
        att = sdpa_args(lv.sdpa)
        heads = int(tensor_val(att["query"]).shape[1])
        if tp.heads_sharded(vlm.tp, lv.nodes, att["query"]):
            heads *= vlm.tp.size     # the selector is built from every rank's heads
        hd = int(tensor_val(att["query"]).shape[-1])
        kv_heads = wk.shape[0] // hd
        selector = site.build(wq, wk, w_norm, heads, kv_heads, calib.get(site.layer, []), bq=bq)
        log.info("vtp %s: layer %d selector %s%s (%s)", site.name, site.layer,
                 "x".join(str(d) for d in selector[0].shape), " + q bias term" if bq is not None else "",
                 "calibrated on the example inputs" if site.layer in calib else "no calibration")
        attrs = []
        for i, t in enumerate(selector):
            name = f"vtp_route_{site.layer}_{i}"
            gm.register_buffer(name, t.detach().contiguous())
            attrs.append(name)

        def scores(graph, entry, state, n_keep, attrs=attrs, site=site):
            nodes = [graph.get_attr(a) for a in attrs]
            return graph.call_function(site.score, (entry, state.visual_mask, state.qpos, *nodes))

        res = compact.apply_site(vlm, site, state, end=site.layer + 1, scores=scores)
        results.append(res)
        if site.layer + 1 < vlm.num_layers:   # the next layer reads the reintegrated stream
            nxt = vlm.layers[site.layer + 1]
            full = [f for f in res.exits if f.args[1] is nxt.entry]
            if len(full) != 1:
                raise Unsupported(f"layer {site.layer + 1} does not read layer {site.layer}'s output")
            nxt.entry = full[0]
    return results


def _placeholder_values(gm: fx.GraphModule, example_inputs) -> dict:
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return dict(zip(phs, example_inputs)) if len(phs) == len(example_inputs) else {}


def _back_to_linear(n: fx.Node, stop: set) -> fx.Node | None:
    """The nearest linear call upstream of ``n`` (breadth first), within the layer's nodes."""
    seen, frontier = set(), [n]
    while frontier:
        nxt = []
        for x in frontier:
            if x in seen or x not in stop:
                continue
            seen.add(x)
            if x.op == "call_function" and x.target in LINEARS:
                return x
            nxt.extend(x.all_input_nodes)
        frontier = nxt
    return None


def _normed_after(n: fx.Node, lin: fx.Node, stop: set) -> bool:
    """Whether an RMS/layer norm (an ``rsqrt``) sits between ``lin`` and ``n``."""
    seen, frontier = set(), [n]
    while frontier:
        nxt = []
        for x in frontier:
            if x in seen or x not in stop or x is lin:
                continue
            seen.add(x)
            if "rsqrt" in (getattr(x.target, "__name__", None) or str(x.target)):
                return True
            nxt.extend(x.all_input_nodes)
        frontier = nxt
    return False


def _weights(lv, real: dict):
    """``(wq, wk, w_norm, bq)`` of a layer whose attention logits (without RoPE) are a bilinear
    form of its RMS-normed input, plus a q bias term (``bq``: None without one)."""
    nodes = set(lv.nodes)
    att = sdpa_args(lv.sdpa)
    q_lin, k_lin = _back_to_linear(att["query"], nodes), _back_to_linear(att["key"], nodes)
    if q_lin is None or k_lin is None:
        raise Unsupported(f"layer {lv.index}: cannot find the q/k projections")
    if _normed_after(att["query"], q_lin, nodes) or _normed_after(att["key"], k_lin, nodes):
        raise Unsupported(f"layer {lv.index}: q/k norms after the projections (per-head "
                          "RMSNorm): the attention logits are not a bilinear form of the layer "
                          "input, which the alvts selector is built from")
    x = q_lin.args[0]
    norm_w = [a for a in getattr(x, "all_input_nodes", []) if a in real and tensor_val(a) is not None
              and tensor_val(a).dim() == 1]
    wq, wk = _full_weight(q_lin.args[1], real), _full_weight(k_lin.args[1], real)
    if x is not k_lin.args[0] or len(norm_w) != 1 or wq is None or wk is None:
        raise Unsupported(f"layer {lv.index}: q/k projections do not read one RMS-normed input")
    bq = None
    if len(q_lin.args) > 2 and q_lin.args[2] is not None:
        bq = _full_weight(q_lin.args[2], real)
        if bq is None:
            raise Unsupported(f"layer {lv.index}: the q projection's bias is not a parameter")
    return wq, wk, _full_weight(norm_w[0], real), bq


def _full_weight(n, real: dict):
    """The whole weight a linear reads: a parameter input, or under tensor parallelism the
    DTensor parameter behind ``W.to_local()``, all-gathered (once, at compile time; every rank
    compiles the same graph, so every rank takes part)."""
    if isinstance(n, fx.Node) and n not in real and n.op == "call_method" and n.target == "to_local":
        n = n.args[0]
    w = real.get(n) if isinstance(n, fx.Node) else None
    return w.full_tensor() if tp.is_dtensor(w) else w


def _calibration(gm, vlm, sites, state, example_inputs) -> dict:
    """``{layer: [(hidden, visual_mask, qpos, n_keep)]}`` from one eager run on the example
    inputs (``n_keep``: the smallest row's, for the top-k agreement check)."""
    if any(isinstance(t, FakeTensor) for t in example_inputs) or not sites:
        return {}
    want = {vlm.layers[s.layer].entry for s in sites} | {state.visual_mask, state.qpos}
    got: dict = {}

    class Enough(Exception):
        """Every wanted value is computed: the rest of the graph need not run."""

    class Capture(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in want:
                got[n] = out
                if len(got) == len(want):
                    raise Enough
            return out

    # only the prefix of the graph up to the last routed layer's input runs; a failure here is a
    # failure of the graph itself (a bug), not something to hide behind the rank cap
    # a dynamic-shape graph's example inputs hold its sizes as SymInts: run with their values
    args = [hint(x) if isinstance(x, torch.SymInt) else x for x in example_inputs]
    with torch.no_grad():
        try:
            Capture(gm).run(*args)
        except Enough:
            pass
    vm, qp = got.get(state.visual_mask), got.get(state.qpos)
    if vm is None or qp is None:
        return {}
    rows = vm.any(1)                  # rows without visual tokens say nothing about ranking
    if not bool(rows.any()):
        return {}
    nv = int(vm[rows].sum(1).min())
    out = {}
    for s in sites:
        h = got.get(vlm.layers[s.layer].entry)
        if h is not None:
            out[s.layer] = [(h[rows], vm[rows], qp[rows], min(int(s.keep.count(nv)), nv))]
    return out
