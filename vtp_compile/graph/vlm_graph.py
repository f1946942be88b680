"""``VLMGraph``: a read-only view of the VLM structure in one Dynamo graph."""
from __future__ import annotations

import dataclasses
from collections import defaultdict

import networkx as nx
import torch
import torch.fx as fx

from .tp import TPInfo, find_tp
from .fx_utils import (Unsupported, is_static_cache_write, is_masked_scatter, is_param_like, is_sdpa, layer_path,
                       op_name, same_size, sdpa_args, tensor_val, to_networkx)


@dataclasses.dataclass
class LayerView:
    """One decoder layer: its nodes, its attention call, where its hidden state enters and leaves."""
    index: int
    path: str
    nodes: list[fx.Node]
    sdpa: fx.Node | None      # None: a layer that mixes tokens without attention (linear attention)
    entry: fx.Node
    output: fx.Node

    @property
    def attention(self) -> dict:
        return sdpa_args(self.sdpa)


@dataclasses.dataclass
class VLMGraph:
    """What the passes need to know about a VLM graph. Build with :meth:`match`."""
    gm: fx.GraphModule
    phase: str      # "prefill" (decoder layers, spliced embeddings), "decode", "splice" (alone)
    layers: list[LayerView]
    splice: fx.Node | None = None  # embeds.masked_scatter(mask, features)
    embeds_input: fx.Node | None = None  # prefill without a splice: the spliced embeddings input
    features: fx.Node | None = None
    visual_mask: fx.Node | None = None  # the mask argument of the splice ([B, L, 1] or [B, L, D])
    vision_context: fx.Node | None = None  # torch.ops.vtp.vision_context (vtp_compile.attach)
    # earlier splices of a chain (images, then videos: each splices into the previous one's
    # output); ``splice`` is the last, the visual positions are the union of every mask
    earlier_splices: tuple[fx.Node, ...] = ()
    # the embeddings the first splice writes into, where they come from another graph (an input
    # without an embedding lookup: LLaVA-OneVision's direct forward splices the images in one
    # graph, the clips in the next); their own visual mask is looked up (kernels/splice.py)
    spliced_before: fx.Node | None = None
    tp: TPInfo | None = None       # the tensor-parallel group (transformers' tp_plan), if any

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def attention_layers(self) -> list[LayerView]:
        return [lv for lv in self.layers if lv.sdpa is not None]

    @classmethod
    def match(cls, gm: fx.GraphModule) -> "VLMGraph":
        """Analyse ``gm``; raises :class:`Unsupported` with the reason when it is not a VLM graph."""
        graph = gm.graph
        splices = _splice_chain([n for n in graph.nodes if is_masked_scatter(n)])
        sdpas = [n for n in graph.nodes if is_sdpa(n)]
        if not sdpas and splices:   # the splice alone: record it for the decoder graph to come
            self = cls(gm=gm, phase="splice", layers=[])
            self._set_splice(splices)
            return self
        if not sdpas:
            raise Unsupported("no scaled_dot_product_attention call in this graph (a fragment without "
                              "decoder layers, or eager attention, which is not supported)")
        nxg = to_networkx(graph)
        if splices:
            splice = splices[-1]
            downstream = nx.descendants(nxg, splice)
            sdpas = [n for n in sdpas if n in downstream]
            if not sdpas:
                raise Unsupported("no attention after the visual splice")
            phase = "prefill"
        else:
            splice = None
            phase = "decode"
        layers = _layers(graph, sdpas, nxg, splice)
        embeds_input = None
        if phase == "decode" and not any(_reads_cache(n) for lv in layers for n in lv.nodes):
            embeds_input = _embeds_input(graph, nxg, layers[0].entry)
            if embeds_input is None:
                raise Unsupported("no visual splice and no cache input (text-only prefill or a "
                                  "vision-encoder fragment): nothing to prune")
            phase = "prefill"   # decoder layers from spliced embeddings made in another graph
        self = cls(gm=gm, phase=phase, layers=layers, embeds_input=embeds_input,
                   tp=find_tp(gm))
        carrier = (torch.ops.vtp.vision_context, torch.ops.vtp.vision_context.default)
        tags = [n for n in graph.nodes if n.op == "call_function" and n.target in carrier]
        if len(tags) > 1:
            raise Unsupported(f"{len(tags)} vision_context nodes in one graph")
        self.vision_context = tags[0] if tags else None
        if splice is not None:
            self._set_splice(splices)
            if layers[0].entry is not splice and splice not in nx.ancestors(nxg, layers[0].entry):
                raise Unsupported("first decoder layer does not consume the visual splice")
        return self

    @property
    def splices(self) -> tuple[fx.Node, ...]:
        """Every splice of the chain, in graph order (one for a model without video)."""
        return (*self.earlier_splices, self.splice) if self.splice is not None else ()

    @property
    def visual_masks(self) -> tuple[fx.Node, ...]:
        """The mask argument of every splice (their union marks the visual positions)."""
        return tuple(s.args[1] for s in self.splices)

    def _set_splice(self, chain: list[fx.Node]) -> None:
        for splice in chain:
            _, mask, feats = (list(splice.args) + [None, None, None])[:3]
            if tensor_val(mask) is None or tensor_val(feats) is None:
                raise Unsupported("visual splice with non-tensor arguments")
        self.splice, self.earlier_splices = chain[-1], tuple(chain[:-1])
        self.visual_mask, self.features = chain[-1].args[1], chain[-1].args[2]
        target = chain[0].args[0]
        if isinstance(target, fx.Node):
            self.spliced_before = _embeds_input(self.gm.graph, to_networkx(self.gm.graph), target)


def _splice_chain(splices: list[fx.Node]) -> list[fx.Node]:
    """The splices of one graph, in order; several only as a chain: each splices into the previous
    one's output (transformers splices the images, then the videos, into the same embeddings).
    A mask that overlaps an earlier one would overwrite its features: the union of the masks is
    the visual set either way, and the model's own placeholder check keeps them disjoint."""
    for prev, nxt in zip(splices, splices[1:]):
        if nxt.args[0] is not prev or len(prev.users) != 1:
            raise Unsupported(f"{len(splices)} visual splices (masked_scatter) in one graph that do not "
                              "form one chain (each into the previous one's output, read by nothing else)")
    return splices


def _layers(graph: fx.Graph, sdpas: list[fx.Node], nxg: nx.DiGraph, splice) -> list[LayerView]:
    owners = {}
    for s in sdpas:
        lp = layer_path(s)
        if lp is None:
            raise Unsupported(f"attention {s.name} has no enclosing layer module")
        owners[s] = lp
    lists = {lp[0] for lp in owners.values()}
    if len(lists) != 1:
        raise Unsupported(f"attention calls in several layer lists: {sorted(lists)}")
    (list_path,) = lists
    by_idx: dict[int, list[fx.Node]] = defaultdict(list)
    for n in graph.nodes:
        if n.op in ("placeholder", "get_attr", "output") or is_param_like(n):
            continue
        lp = layer_path(n)
        if lp is not None and lp[0] == list_path:
            by_idx[lp[1]].append(n)
    idxs = sorted(by_idx)
    if idxs != list(range(len(idxs))):
        raise Unsupported(f"decoder layers {idxs} are not contiguous from 0 (graph fragment)")
    layers = []
    prev_out = None
    for i in idxs:
        nodes = by_idx[i]
        node_set = set(nodes)
        layer_sdpas = [n for n in nodes if n in owners]
        if len(layer_sdpas) > 1:
            raise Unsupported(f"layer {i} has {len(layer_sdpas)} attention calls")
        externals = []
        for n in nodes:
            for a in n.all_input_nodes:
                if a not in node_set and not is_param_like(a) and a not in externals:
                    externals.append(a)
        if prev_out is None:
            cands = [a for a in externals if splice is None or a is splice or splice in nx.ancestors(nxg, a)]
            # the hidden state is the external input that is consumed by the layer's residual
            cands = [a for a in cands if tensor_val(a) is not None and tensor_val(a).dim() == 3]
            if splice is None:
                cands = [a for a in cands if _feeds_residual(a, node_set)]
            if len(cands) != 1:
                raise Unsupported(f"cannot find the hidden state entering layer {i}: {[c.name for c in cands]}")
            entry = cands[0]
        else:
            if prev_out in externals:
                entry = prev_out
            else:   # something between the layers rewrites the residual stream (Qwen3-VL's
                # deepstack adds visual features again): the layer reads a copy of the output
                ev = tensor_val(prev_out)
                cands = [a for a in externals if a in nx.descendants(nxg, prev_out)
                         and tensor_val(a) is not None and tensor_val(a).dim() == ev.dim()
                         and all(same_size(x, y) for x, y in zip(tensor_val(a).shape, ev.shape))]
                if len(cands) != 1:
                    raise Unsupported(f"layer {i} does not consume the output of layer {i - 1}")
                entry = cands[0]
        out = _layer_output(nodes, node_set, entry)
        layers.append(LayerView(i, f"{list_path}.{i}", nodes, layer_sdpas[0] if layer_sdpas else None,
                                entry, out))
        prev_out = out
    return layers


def _embeds_input(graph: fx.Graph, nxg: nx.DiGraph, entry: fx.Node) -> fx.Node | None:
    """The ``[B, L, D]`` float graph input the first layer's hidden state comes from, when the
    embeddings were made (and possibly spliced) in another graph: no embedding lookup here."""
    anc = nx.ancestors(nxg, entry) | {entry}
    if any(op_name(n) == "embedding" for n in anc):
        return None
    cands = [n for n in anc if n.op == "placeholder" and not is_param_like(n)
             and tensor_val(n) is not None and tensor_val(n).dim() == 3
             and tensor_val(n).is_floating_point()]
    return cands[0] if len(cands) == 1 else None


def _reads_cache(n: fx.Node) -> bool:
    """A KV-cache update ``cat([past, new], dim=-2)`` whose ``past`` is a graph input, or a
    static cache write into a buffer that is a graph input."""
    if is_static_cache_write(n):
        return n.args[0].op == "placeholder"
    if n.op != "call_function" or getattr(n.target, "__name__", "") != "cat" or not n.args:
        return False
    parts = n.args[0]
    return isinstance(parts, (list, tuple)) and any(
        isinstance(p, fx.Node) and p.op == "placeholder" and tensor_val(p) is not None
        and tensor_val(p).dim() == 4 for p in parts)


def _feeds_residual(a: fx.Node, node_set: set) -> bool:
    import operator
    return any(u in node_set and u.op == "call_function" and u.target is operator.add for u in a.users)


def _layer_output(nodes: list[fx.Node], node_set: set, entry: fx.Node) -> fx.Node:
    ev = tensor_val(entry)
    cands = []
    for n in nodes:
        v = tensor_val(n)
        if v is None or v.dim() != ev.dim() or not all(same_size(a, b) for a, b in zip(v.shape, ev.shape)):
            continue
        if any(u not in node_set and u.op != "output" for u in n.users):
            cands.append(n)
    if len(cands) != 1:
        raise Unsupported(f"cannot find a unique layer output: {[c.name for c in cands]}")
    return cands[0]
