"""Vision-tower internals of vLLM's CLIP-style towers, for VisionZip and Nüwa's stage 1.

vLLM's tower runs its attention through an opaque op and returns only the selected hidden
state, so :class:`Capture` keeps, while the tower runs, each encoder layer's input and the last
layer's output (forward hooks, removed afterwards), then
:func:`vtp_compile.vision_context.vision_internals` -- the transformers path's function --
recomputes the internals from them with the layer's own ``layer_norm1`` and query/key
projections (vLLM fuses them in ``qkv_proj``; :class:`_Attention` splits them).

vLLM builds only the layers the model uses (``vision_feature_layer=-2`` drops the last one);
a method that needs hidden states of a layer vLLM did not build is refused at start-up.
"""
from __future__ import annotations

import math

import torch

from ...vision_context import vision_internals


class _Attention:
    """The ``q_proj``/``k_proj``/``num_heads``/``head_dim``/``scale`` view of vLLM's fused
    attention that :func:`vision_internals` reads."""

    def __init__(self, attn):
        self._attn = attn
        self.num_heads = getattr(attn, "num_heads_per_partition", attn.num_heads)
        self.head_dim = attn.head_dim
        self.scale = attn.scale

    def _split(self, x, i):
        qkv, _ = self._attn.qkv_proj(x)
        n = self.num_heads * self.head_dim
        return qkv[..., i * n:(i + 1) * n]

    def q_proj(self, x):
        return self._split(x, 0)

    def k_proj(self, x):
        return self._split(x, 1)


class _Layer:
    def __init__(self, layer):
        self.layer_norm1 = layer.layer_norm1
        self.self_attn = _Attention(layer.self_attn)


def tower_layers(vision_tower):
    """``(layers, n_full, has_cls)``: the encoder layers vLLM built, the tower's configured layer
    count and whether it has a CLS embedding. Raises ``ValueError`` for other towers."""
    inner = getattr(vision_tower, "vision_model", vision_tower)
    layers = getattr(getattr(inner, "encoder", None), "layers", None)
    if layers is None or not len(layers) or not hasattr(layers[0], "layer_norm1") \
            or not hasattr(getattr(layers[0], "self_attn", None), "qkv_proj"):
        raise ValueError(f"vtp: no CLIP/SigLIP-style encoder layers in {type(vision_tower).__name__}")
    cfg = getattr(inner, "config", None)
    n_full = getattr(cfg, "num_hidden_layers", len(layers))
    return layers, n_full, hasattr(getattr(inner, "embeddings", None), "class_embedding")


def check(spec, built: int, n_full: int) -> None:
    """That a tower of which vLLM builds ``built`` of ``n_full`` layers holds what ``spec``'s
    site reads (:class:`~vtp_compile.errors.OptionError`, a ``ValueError``, if not). The
    processor calls it for every request, the model at start-up: the model itself must never
    fail on a request (the placeholders are already cut)."""
    at = _layer_index(spec, n_full)
    if at >= built:
        raise _error(f"vtp: {spec.method} reads vision layer {at}, which vLLM does not build for "
                     f"this model (it builds {built} of {n_full} layers, up to the projector's "
                     f"vision_feature_layer); methods that need no vision internals: "
                     f"random, divprune, cdpruner, acgr")
    if spec.method == "nuwa" and built < n_full:
        raise _error(f"vtp: nuwa averages the hidden states of the upper half of the vision "
                     f"layers; vLLM builds {built} of {n_full} for this model (its "
                     f"vision_feature_layer is not the last); visionzip reads layer -2 and runs")


def _error(msg):
    from ...errors import OptionError
    return OptionError(msg)


def _layer_index(spec, n_full: int) -> int:
    v = getattr(spec.site, "vision_layer", None)
    if v is None:
        return n_full - 2
    return v % n_full


class Capture:
    """``with Capture(tower) as cap: tower(pixels)``; then :meth:`context` per image."""

    def __init__(self, vision_tower, keep_cls: bool):
        self.layers, self.n_full, self.has_cls = tower_layers(vision_tower)
        self.keep_cls = keep_cls
        self.states: list = [None] * (self.n_full + 1)
        self._hooks = []

    def __enter__(self):
        for i, layer in enumerate(self.layers):
            self._hooks.append(layer.register_forward_pre_hook(self._pre(i)))
        last = len(self.layers) - 1
        self._hooks.append(self.layers[last].register_forward_hook(self._post(last + 1)))
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _pre(self, i):
        def hook(module, args):
            self.states[i] = args[0] if args else None
        return hook

    def _post(self, i):
        def hook(module, args, output):
            self.states[i] = output[0] if isinstance(output, tuple) else output
        return hook

    def context(self, spec):
        """The site's ``ctx`` for every captured image: a list of ``(cls [1, N], upper [1, N, Dv],
        gh, gw, keys [1, N, hd], received [1, N])``."""
        at = _layer_index(spec, self.n_full)
        layers = [None] * self.n_full
        for i, layer in enumerate(self.layers):
            layers[i] = _Layer(layer)
        states = self.states
        if spec.method != "nuwa":   # only Nüwa reads the upper layers' hidden states
            x = states[at]
            states = [s if s is not None else x for s in states]
        with torch.no_grad():
            cls, upper, keys, received = vision_internals(layers, states, at=at,
                                                          keep_cls=self.keep_cls, has_cls=self.has_cls)
        N = cls.shape[1]
        patches = N - (1 if self.keep_cls else 0)
        g = math.isqrt(patches)
        gh, gw = (g, g) if g * g == patches else (1, patches)
        return [(cls[i:i + 1], upper[i:i + 1], gh, gw, keys[i:i + 1], received[i:i + 1])
                for i in range(cls.shape[0])]
