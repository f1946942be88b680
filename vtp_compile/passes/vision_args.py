"""The vision tower's internals for ``context`` sites (Nüwa): where the graph has them.

Direct compiled forward: a ``vision_context`` carrier node holds them (and is removed once
read). ``generate``: the prefill graph looks them up from the record ``attach`` left while
``generate`` encoded the images eagerly (see :mod:`vtp_compile.vision_context`).
"""
from __future__ import annotations

import operator

import torch

from ..graph.fx_utils import Unsupported, insert_after, same_size, tensor_val
from ..graph.vlm_graph import VLMGraph
from ..sites import method_of
from ..errors import OptionError

ops = torch.ops.vtp


def spliced_features(embeds: torch.Tensor, visual_mask: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` visual rows of ``embeds`` ``[B, L, D]`` in splice order (row after
    row), a fixed shape: the features a decoder graph that starts from spliced embeddings holds
    (Qwen's direct forward, kernels/splice.py). Traced into the graph."""
    flat = embeds.reshape(-1, embeds.shape[-1])
    order = torch.sort((~visual_mask.reshape(-1)).to(torch.uint8), stable=True).indices[:count]
    return flat[order]


def context_args(vlm: VLMGraph, site, visual_mask=None) -> tuple:
    """``(cls_attn, upper, grid_h, grid_w, keys, received)`` nodes/values for a ``context``
    site. ``visual_mask``: the graph's ``[B, L]`` visual-mask node, where the splice happened in
    an earlier graph (no features node here)."""
    from .. import vision_context
    if vlm.earlier_splices:
        raise Unsupported(f"{method_of(site)} reads the vision tower's internals of one kind of input, "
                          f"and this graph splices {len(vlm.splices)} (images, then videos)")
    tag = vlm.vision_context
    want = getattr(site, "vision_layer", None)
    if tag is not None:
        cls, upper, keys, received, gh, gw, layer = tag.args[1:8]
        _check_layer(site, want, layer)
        _check_one_feature_per_patch(vlm, site, tensor_val(cls))
        return cls, upper, gh, gw, keys, received
    rec = vision_context.last_record()
    if rec is None:
        raise OptionError(
            f"vtp: method {method_of(site)!r} reads the vision tower's internals (CLS attention, upper "
            "layers), which are not in this graph; call vtp_compile.attach(model) once before "
            "model.compile(...) so that they reach it, and set "
            "torch._dynamo.config.capture_scalar_outputs = True (without it Dynamo splits the "
            "vision tower and the decoder into separate graphs) (README: Nüwa)")
    if rec.refused:
        raise Unsupported(f"{method_of(site)}: {rec.refused}")
    if rec.no_grid and getattr(site, "grid", True):
        raise Unsupported(f"{method_of(site)}: {rec.no_grid}")
    _check_layer(site, want, rec.layer)
    _check_one_feature_per_patch(vlm, site, rec.cls_attn)
    g = vlm.gm.graph
    gh, gw = rec.grid
    feats = vlm.features
    if feats is None and vlm.splice is None and visual_mask is not None:
        # spliced in an earlier graph: the recorded count of visual rows of the input embeddings
        # (a different count gives other rows, which the lookup refuses)
        with insert_after(g, visual_mask):
            feats = g.call_function(spliced_features, (vlm.embeds_input, visual_mask,
                                                       int(rec.features.shape[0])))
        with insert_after(g, feats):
            out = g.call_function(ops.vision_lookup.default, (feats, gh, gw, int(rec.upper.shape[-1]),
                                                              int(rec.keys.shape[-1]),
                                                              int(rec.cls_attn.shape[-1]) - gh * gw))
        with insert_after(g, out):
            parts = [g.call_function(operator.getitem, (out, i)) for i in range(4)]
        return parts[0], parts[1], gh, gw, parts[2], parts[3]
    fv = tensor_val(feats)
    if fv is not None and fv.dim() > 2:     # [n_img, N, D] (PaliGemma): as recorded, [n_img * N, D]
        with insert_after(g, feats):
            feats = g.call_method("reshape", (feats, -1, fv.shape[-1]))
        anchor = feats
    else:
        anchor = vlm.features
    with insert_after(g, anchor):
        out = g.call_function(ops.vision_lookup.default, (feats, gh, gw, int(rec.upper.shape[-1]),
                                                          int(rec.keys.shape[-1]),
                                                          int(rec.cls_attn.shape[-1]) - gh * gw))
    with insert_after(g, out):
        cls, upper, keys, received = [g.call_function(operator.getitem, (out, i)) for i in range(4)]
    return cls, upper, gh, gw, keys, received


def _check_one_feature_per_patch(vlm: VLMGraph, site, cls) -> None:
    """The internals are per vision patch, image after image; the splice must place exactly one
    feature per patch in that order (not so for anyres packing with newline tokens, or pooled
    or merged patches), else the scores would land on the wrong tokens."""
    feats = tensor_val(vlm.features)
    if cls is None or feats is None or feats.dim() < 2:
        return
    rows = feats.numel() // feats.shape[-1]
    if not same_size(rows, cls.numel()):
        raise Unsupported(f"{method_of(site)} reads per-patch vision internals ({cls.numel()} "
                          f"patches) and this model splices {rows} visual features (the projector "
                          "packs, pools or merges patches)")


def _check_layer(site, want: int | None, have: int) -> None:
    if want is not None and want != have:
        raise OptionError(f"vtp: method {method_of(site)!r} reads vision layer {want}, and "
                          f"vtp_compile.attach(model) recorded layer {have}; call "
                          f"vtp_compile.detach(model) and vtp_compile.attach(model, vision_layer={want})")


def strip_vision_context(vlm: VLMGraph) -> None:
    """Replace the ``vision_context`` carrier by its input and drop what only it used."""
    tag = vlm.vision_context
    if tag is None:
        return
    g = vlm.gm.graph
    tag.replace_all_uses_with(tag.args[0])
    work = [a for a in tag.all_input_nodes if a is not tag.args[0]]
    g.erase_node(tag)
    vlm.vision_context = None
    while work:
        n = work.pop()
        if n.users or n.op not in ("call_function", "call_method", "call_module"):
            continue
        work.extend(n.all_input_nodes)
        g.erase_node(n)
