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


@dataclasses.dataclass
class Record:
    """The internals of the images of one ``generate`` call, with their projected features."""
    features: torch.Tensor      # [n_img * N, D] as the prefill splices them
    cls_attn: torch.Tensor      # [n_img, N]
    upper: torch.Tensor         # [n_img, N, Dv]
    grid: tuple[int, int]


_RECORD: Record | None = None


def last_record() -> Record | None:
    """The record the model pre-hook left (None before any attached ``generate``)."""
    return _RECORD


def _vision_layers(model):
    tower = getattr(model.base_model, "vision_tower", None)
    inner = getattr(tower, "vision_model", tower)       # older transformers wrap it once more
    layers = getattr(getattr(inner, "encoder", None), "layers", None)
    if layers is None or not hasattr(getattr(inner, "embeddings", None), "class_embedding"):
        raise ValueError(
            "vtp: attach() needs a CLIP-style vision tower (encoder.layers and a CLS embedding); "
            f"{type(tower).__name__} has none")
    if len(layers) < 2:
        raise ValueError("vtp: the vision tower needs at least 2 layers (CLS attention is read "
                         "at vision layer -2)")
    return tower, layers


def attach(model):
    """Let encoder-stage methods (Nüwa) read the vision tower's internals; returns ``model``.

    Call once, before the first compiled call::

        vtp_compile.attach(model)
        model.compile(backend="vtp", options={"method": "nuwa", "budget": 64})

    Idempotent. Raises ``ValueError`` for models it cannot serve (no CLS token in the vision
    tower, a feature-select strategy other than ``"default"``). Eager results are unchanged;
    :func:`detach` removes the hooks.
    """
    if getattr(model, _ATTR, None) is not None:
        return model
    cfg = model.config
    layer = getattr(cfg, "vision_feature_layer", None)
    if getattr(cfg, "vision_feature_select_strategy", None) != "default" or not isinstance(layer, int):
        raise ValueError("vtp: attach() supports vision_feature_select_strategy='default' (CLS "
                         "dropped) with one int vision_feature_layer")
    tower, layers = _vision_layers(model)
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
        cls, upper = vision_internals(layers, hidden)
        hidden[layer] = torch.ops.vtp.vision_context(hidden[layer], cls, upper, *grid)
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
            cls, upper = vision_internals(layers, hidden)
            feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in image.pooler_output])
        _RECORD = Record(feats, cls, upper, grid)
        return None

    handles = (tower.register_forward_pre_hook(keep_all_hidden, with_kwargs=True),
               tower.register_forward_hook(tag_in_graph, with_kwargs=True),
               model.register_forward_pre_hook(record_for_generate, with_kwargs=True))
    setattr(model, _ATTR, handles)
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
    return model


def vision_internals(layers, hidden_states):
    """``(cls_attn [n, N], upper [n, N, Dv])`` in float32, CLS column dropped.

    ``cls_attn``: the attention the CLS query pays each patch in vision layer -2, summed over
    heads, recomputed from that layer's input (``hidden_states[-3]``) and its own
    ``layer_norm1``/``q_proj``/``k_proj``. ``upper``: the mean of the hidden states the upper half of the layers output.
    """
    n_layers = len(layers)
    layer = layers[n_layers - 2]
    attn = layer.self_attn
    x = layer.layer_norm1(hidden_states[n_layers - 2])
    n, T, _ = x.shape
    H, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(x[:, :1]).float().view(n, 1, H, hd).transpose(1, 2)
    k = attn.k_proj(x).float().view(n, T, H, hd).transpose(1, 2)
    att = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1)[:, :, 0]       # [n, H, T]
    cls = att.sum(1)[:, 1:]
    upper = torch.stack([hidden_states[i].float() for i in range(n_layers // 2 + 1, n_layers + 1)])
    return cls, upper.mean(0)[:, 1:]
