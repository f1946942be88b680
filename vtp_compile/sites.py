"""Sites: where a method acts. Methods return sites (policy); passes apply them (mechanism).

Score and merge callables are traced into the graph, so they must be plain torch code or
``torch.ops`` calls. They receive one ``dict`` of tensors (a method reads what it needs):

* ``hidden`` ``[B, L, D]``: the hidden state entering the site (the spliced embedding at an
  encoder site);
* ``visual_mask`` / ``live`` ``[B, L]`` bool: visual positions; real tokens (not padding, not a
  dead slot of an earlier site);
* ``qpos`` ``[B]``: each row's last live position (its last token, whichever side is padded);
* ``n_keep`` ``[B]`` int64: visual tokens each row keeps (rows may differ in visual count).

A score returns ``[B, L]`` floats; each row keeps its top ``n_keep`` visual positions (ties:
lower position first).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from .config import KeepRule


@dataclasses.dataclass(frozen=True)
class LayerSite:
    """Prune between decoder layers ``layer - 1`` and ``layer``.

    ``score(x)`` gets, besides the common keys, layer ``layer - 1``'s attention inputs: ``q``
    ``[B, H, 1, D]`` (each row's last live query, after RoPE), ``k`` ``[B, Hkv, L, D]``,
    ``key_mask`` ``[B, L]`` (what that query may attend to: bool, or additive float) and
    ``scale``. ``merge(x)`` (optional) runs before removal with ``hidden``, ``visual_mask``,
    ``keep_mask`` ``[B, L]``, ``scores`` and ``live``, and returns the hidden state (e.g. with removed
    tokens folded into kept ones).

    ``own_attention=True``: ``q``, ``k``, ``key_mask`` and ``scale`` come from layer ``layer``
    itself instead, computed on the sequence entering it, before the site removes anything
    (a copy of the graph's own pre-attention nodes of that layer; PDrop scores this way).
    Then ``layer`` may be 0.

    ``inputs`` asks for more keys (computed only when asked):

    * ``"q_all"`` ``[B, H, L, D]``: every query of the scoring layer (with the scale folded in
      when the graph computes it); ``"mask_all"`` ``[B, L, S]``: what each of them may attend
      to (bool, or additive float; live keys only). SparseVLM scores with its raters' rows.
    * ``"embeds"`` ``[B, L, D]``: the hidden state entering decoder layer 0 (the spliced input
      embedding), gathered into the current layout (earlier sites may have compacted it).
    * ``"n_orig"`` ``[B]`` int64: each row's visual count before the first site.
    """
    layer: int
    keep: KeepRule
    score: Callable
    name: str = "layer"
    merge: Callable | None = None
    method: str = ""          # the method's option name, for messages (default: ``name``)
    own_attention: bool = False
    inputs: tuple = ()


@dataclasses.dataclass(frozen=True)
class EncoderSite:
    """Select visual tokens on the spliced embedding, before the first decoder layer.

    ``score(x)`` gets the common keys (``hidden`` is the spliced input embedding, so the visual
    positions hold the projected visual features). ``merge`` as for :class:`LayerSite`.

    ``context=True``: the site reads the vision tower's internals (see
    :mod:`vtp_compile.vision_context`) of vision layer ``vision_layer`` (None: the layer
    :func:`vtp_compile.attach` read, by default the tower's own default); both callables get
    ``x["ctx"] = (cls_attn [n_img, N], upper [n_img, N, Dv], grid_h, grid_w, keys [n_img, N, hd],
    received [n_img, N])``, image after image in the order the splice places them; ``N`` is
    ``grid_h * grid_w`` plus the tokens each image starts with that are not patches (1: a CLS token
    kept by ``vision_feature_select_strategy="full"``, first), ``N - grid_h * grid_w``.
    ``grid=False``: the site reads the internals per token only, never the grid, so it also
    runs where the images have no one grid (Qwen images of different sizes: ``(1, T)``).

    ``inputs=("frames",)``: both callables also get ``x["frames"]`` ``[B, L]`` int64, each visual
    position's frame (an image is one frame; kernels/frames.py), -1 elsewhere.
    """
    keep: KeepRule
    score: Callable
    name: str = "encoder"
    merge: Callable | None = None
    context: bool = False
    method: str = ""
    vision_layer: int | None = None
    grid: bool = True
    inputs: tuple = ()


@dataclasses.dataclass(frozen=True)
class ReserveSite(LayerSite):
    """A :class:`LayerSite` that also carries a reserve through the later layers (DSTP).

    The top ``keep`` visual tokens are *active*; the next ``reserve`` by score (None: as many as
    active; DSTP's ``score`` ranks its chosen reserve right after the active set, see
    ``reserve_by``) are computed in every later layer so their keys/values exist, but no
    non-reserve token attends to them during prefill. At each decode step the current query
    re-scores active ∪ reserve at layer ``layer - 1`` (``layer`` itself with
    ``own_attention``); when the shift
    ``1 - mass(active) / mass(best keep)`` exceeds ``tau`` the active set becomes the best
    ``keep``. Decode steps attend to the active set plus every non-visual entry only.
    """
    reserve: int | None = None
    tau: float = 0.2


@dataclasses.dataclass(frozen=True)
class DecodeSite:
    """Decode steps only (prefill is untouched): at each step the current token's head-mean
    attention at the last attention layer before ``layer`` picks the ``ratio`` most attended of
    the prompt's visual cache columns (at least one per row that has any); the layers from
    ``layer`` on attend to those plus every non-visual column, the layers before it to all.
    A step keeps the previous step's pick while the cosine similarity of its attention over the
    visual columns with the previous step's stays at or above ``similarity`` (DyCoke's stage 2:
    dynamic KV cache reduction)."""
    layer: int
    ratio: float
    similarity: float = 0.9
    name: str = "decode"
    method: str = ""


@dataclasses.dataclass(frozen=True)
class RouteSite:
    """Inside decoder layer ``layer``: the top ``keep`` visual tokens go through the layer, the
    others skip it unchanged; both streams are reintegrated before the next layer (ALVTS).

    ``build(wq, wk, w_norm, heads, kv_heads, calib) -> selector`` runs once at compile time on
    the layer's own weights (``calib``: a list of ``(hidden [B, L, D], visual_mask, qpos,
    n_keep)`` from the example inputs, possibly empty) and returns a tuple of tensors;
    ``score(hidden, visual_mask, qpos, *selector) -> [B, L]`` is traced into the graph.
    """
    layer: int
    keep: KeepRule
    build: Callable
    score: Callable
    name: str = "route"
    method: str = ""


def needs_frames(site) -> bool:
    """Whether a site's selection needs each position's frame: its score or merge reads
    ``x["frames"]`` (``inputs=("frames",)``), or its keep rule spreads the count over frames
    (``per_frame``, ``frame_tokens``)."""
    return site.keep.frames is not None or "frames" in getattr(site, "inputs", ())


def method_of(site) -> str:
    """The option name of the method a site belongs to."""
    return site.method or site.name
