"""Vision-encoder internals for the compiled graph: :func:`attach`.

Encoder-stage methods such as Nüwa score visual tokens with the vision tower's own internals
(the CLS attention of vision layer -2, the upper layers' hidden states), which the language
model never reads. A torch.compile backend sees only the graph Dynamo hands it, and where the
vision tower runs depends on the call:

- **direct compiled forward**: the vision tower runs inside the graph, but ``forward`` keeps
  only the projected features, so the internals are dead code;
- **``generate``** (transformers 5.x): the vision tower runs eagerly, before the first compiled
  forward (``_prepare_multimodal_encoder_kwargs_for_generation``); the prefill graph receives
  only the projected features as an input.

``attach(model)`` installs three hooks, one job each:

1. a pre-hook on the vision tower asks it for all its hidden states (transformers 5.2x keeps
   only the layer ``get_image_features`` selects);
2. a forward hook on the vision tower, active only while Dynamo traces (the direct path),
   computes the internals with the tower's own modules (:func:`vision_internals`) and passes
   the selected hidden state through ``torch.ops.vtp.vision_context(x, *internals)``, an
   identity whose extra arguments put the internals in the graph; the passes read them there,
   then remove the node (without a site that asks for them they cost nothing);
3. a pre-hook on the model, always eager, that sees ``generate``'s ``mm_encoder_outputs``:
   it computes the internals and records them with the projected features they belong to. The
   prefill graph's ``torch.ops.vtp.vision_lookup(features)`` returns them and raises if the
   features it is given are not the recorded ones (a stale record is an error, not a guess).

Model hooks are not patches: the modeling code is untouched and :func:`detach` removes them.
"""
from __future__ import annotations

import dataclasses

import torch

from . import kernels  # noqa: F401  (registers torch.ops.vtp.vision_context / vision_lookup)

_ATTR = "_vtp_vision_hooks"
_LAYER_ATTR = "_vtp_vision_layer"


@dataclasses.dataclass
class Record:
    """The internals of the images of one ``generate`` call, with their projected features."""
    features: torch.Tensor      # [n_img * N, D] as the prefill splices them
    cls_attn: torch.Tensor      # [n_img, N]; N = gh * gw, plus 1 (the CLS token, first) with "full"
    upper: torch.Tensor         # [n_img, N, Dv]
    keys: torch.Tensor          # [n_img, N, hd]
    received: torch.Tensor      # [n_img, N]
    grid: tuple[int, int]
    layer: int = -2             # the vision layer whose attention cls_attn/keys/received read


_RECORD: Record | None = None


def last_record() -> Record | None:
    """The record the model pre-hook left (None before any attached ``generate``)."""
    return _RECORD


def _vision_layers(model):
    """``(tower, layers, has_cls)``: a CLIP-style (CLS embedding) or SigLIP-style (none) tower."""
    tower = getattr(model.base_model, "vision_tower", None)
    inner = getattr(tower, "vision_model", tower)       # older transformers wrap it once more
    layers = getattr(getattr(inner, "encoder", None), "layers", None)
    emb = getattr(inner, "embeddings", None)
    if layers is None or emb is None or not hasattr(layers[0], "layer_norm1") \
            or not hasattr(getattr(layers[0], "self_attn", None), "q_proj"):
        raise ValueError(
            "vtp: attach() needs a CLIP- or SigLIP-style vision tower (vision_tower with "
            f"embeddings and encoder.layers); {type(tower).__name__} has none")
    if len(layers) < 2:
        raise ValueError("vtp: the vision tower needs at least 2 layers (CLS attention is read "
                         "at vision layer -2)")
    return tower, layers, hasattr(emb, "class_embedding")


def _feature_source(cfg, has_cls: bool):
    """``(vision_feature_layer or None, keep_cls)``: which tower output the projector reads (an
    int hidden-state index, or None: ``last_hidden_state``, as PaliGemma) and whether the CLS
    token is spliced. Raises ``ValueError`` for layouts whose tokens are not the tower's."""
    layer = getattr(cfg, "vision_feature_layer", None)
    strategy = getattr(cfg, "vision_feature_select_strategy", None)
    if layer is None and strategy is None and not has_cls:
        return None, False                          # PaliGemma: projector(last_hidden_state)
    if not isinstance(layer, int) or strategy not in ("default", "full"):
        raise ValueError("vtp: attach() supports vision_feature_select_strategy='default' (CLS "
                         "dropped) or 'full' (CLS kept as the first visual token of each image) "
                         "with one int vision_feature_layer")
    if strategy == "default" and not has_cls:
        raise ValueError("vtp: vision_feature_select_strategy='default' drops the first token, "
                         "and this vision tower has no CLS token (a patch would be dropped)")
    return layer, strategy == "full" and has_cls


def attach(model, vision_layer: int = -2):
    """Let encoder-stage methods (Nüwa, VisionZip) read the vision tower's internals; returns
    ``model``.

    Call once, before the first compiled call::

        vtp_compile.attach(model)
        model.compile(backend="vtp", options={"method": "nuwa", "budget": 64})

    ``vision_layer`` (default -2, the papers'): the vision layer whose attention the internals
    read (CLS attention, keys, attention received); a method option asking for another layer is
    an error until ``attach`` is called again with it (after :func:`detach`). Idempotent.

    Towers: CLIP-style (a CLS embedding) with ``vision_feature_select_strategy`` ``"default"``
    (CLS dropped) or ``"full"`` (the CLS token is the first visual token of each image and the
    internals hold it too, first column; its CLS attention is the CLS query's attention to
    itself; Nüwa keeps it as an anchor, untouched), and SigLIP-style (no CLS) with ``"full"`` or
    with no feature-select fields (PaliGemma: the projector reads ``last_hidden_state``); there
    ``cls_attn`` is the attention each patch receives (see docs/methods.md, Nüwa). Raises
    ``ValueError`` for models it cannot serve (another tower, another strategy, ``"default"``
    on a tower without CLS). Eager results are unchanged;
    :func:`detach` removes the hooks.
    """
    handles = getattr(model, _ATTR, None)
    if handles is not None:
        if getattr(model, _LAYER_ATTR, -2) != vision_layer:
            raise ValueError(f"vtp: attach() already read vision layer {getattr(model, _LAYER_ATTR, -2)}; "
                             f"detach(model) first to read layer {vision_layer}")
        return model
    tower, layers, has_cls = _vision_layers(model)
    layer, keep_cls = _feature_source(model.config, has_cls)
    if not -len(layers) <= vision_layer < len(layers):
        raise ValueError(f"vtp: vision_layer {vision_layer} is out of range for a vision tower of "
                         f"{len(layers)} layers")
    at = vision_layer % len(layers)
    grid = (tower.config.image_size // tower.config.patch_size,) * 2

    def keep_all_hidden(module, args, kwargs):
        if kwargs.get("output_hidden_states") is True:
            return None
        kwargs["output_hidden_states"] = True
        return args, kwargs

    def tag_in_graph(module, args, kwargs, output):
        if not torch.compiler.is_compiling() or getattr(output, "hidden_states", None) is None:
            return None
        hidden = list(output.hidden_states)
        parts = vision_internals(layers, hidden, at, keep_cls=keep_cls, has_cls=has_cls)
        if layer is None:       # the projector reads last_hidden_state
            output.last_hidden_state = torch.ops.vtp.vision_context(output.last_hidden_state, *parts,
                                                                    *grid, vision_layer)
            return output
        hidden[layer] = torch.ops.vtp.vision_context(hidden[layer], *parts, *grid, vision_layer)
        output.hidden_states = tuple(hidden)
        return output

    @torch.compiler.disable
    def record_for_generate(module, args, kwargs):
        global _RECORD
        image = (kwargs.get("mm_encoder_outputs") or {}).get("image")
        hidden = getattr(image, "hidden_states", None)
        if hidden is None or any(h is None for h in hidden):
            return None
        with torch.no_grad():
            cls, upper, keys, received = vision_internals(layers, hidden, at, keep_cls=keep_cls,
                                                           has_cls=has_cls)
            feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in image.pooler_output])
        _RECORD = Record(feats, cls, upper, keys, received, grid, vision_layer)
        return None

    handles = (tower.register_forward_pre_hook(keep_all_hidden, with_kwargs=True),
               tower.register_forward_hook(tag_in_graph, with_kwargs=True),
               model.register_forward_pre_hook(record_for_generate, with_kwargs=True))
    setattr(model, _ATTR, handles)
    setattr(model, _LAYER_ATTR, vision_layer)
    return model


def is_attached(model) -> bool:
    """Whether :func:`attach` hooks are installed on ``model``."""
    return getattr(model, _ATTR, None) is not None


def detach(model):
    """Remove the hooks :func:`attach` installed (no-op if none); returns ``model``."""
    handles = getattr(model, _ATTR, None)
    if handles is not None:
        for h in handles:
            h.remove()
        delattr(model, _ATTR)
        if hasattr(model, _LAYER_ATTR):
            delattr(model, _LAYER_ATTR)
    return model


def vision_internals(layers, hidden_states, at: int | None = None, keep_cls: bool = False,
                     has_cls: bool = True):
    """``(cls_attn [n, N], upper [n, N, Dv], keys [n, N, hd], received [n, N])`` in float32,
    CLS column dropped (``keep_cls``: kept, first, as ``vision_feature_select_strategy="full"``
    splices it), from vision layer ``at`` (default: -2), recomputed from that layer's
    input (``hidden_states[at]``) with its own ``layer_norm1``/``q_proj``/``k_proj``:

    - ``cls_attn``: the attention the CLS query pays each patch, summed over heads;
    - ``keys``: the layer's keys, mean over heads (VisionZip's contextual merge metric);
    - ``received``: the attention each patch receives, mean over every query and head (the score
      of towers without a CLS token);
    - ``upper``: the mean of the hidden states the upper half of the layers output.

    ``has_cls=False`` (SigLIP-style towers): no column is dropped and ``cls_attn`` is the
    attention each patch receives, summed over heads and averaged over every query (Nüwa's anchor
    score without a CLS token: docs/methods.md).
    """
    n_layers = len(layers)
    at = n_layers - 2 if at is None else at
    layer = layers[at]
    attn = layer.self_attn
    x = layer.layer_norm1(hidden_states[at])
    n, T, _ = x.shape
    H, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(x).float().view(n, T, H, hd).transpose(1, 2)
    k = attn.k_proj(x).float().view(n, T, H, hd).transpose(1, 2)
    att = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1)                  # [n, H, T, T]
    s = 0 if keep_cls or not has_cls else 1
    if has_cls:
        cls = att[:, :, 0].sum(1)[:, s:]           # with the CLS column: the CLS query's self-attention
    else:
        cls = att.sum(1).mean(1)                   # attention received: head-summed, query mean
    received = att.mean(dim=(1, 2))[:, s:]
    keys = k.mean(1)[:, s:]
    upper = torch.stack([hidden_states[i].float() for i in range(n_layers // 2 + 1, n_layers + 1)])
    return cls, upper.mean(0)[:, s:], keys, received
