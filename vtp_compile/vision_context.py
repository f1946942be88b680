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

Qwen-style towers (Qwen2-VL, Qwen2.5-VL: a ``patch_embed``, ``blocks`` with ``norm1`` and a
fused ``attn.qkv``, a ``merger`` of ``spatial_merge_size²`` consecutive patches): hooks on the
tower, on the block read and on the upper blocks, each run eagerly (``torch.compiler.disable``:
a graph break inside the tower in a direct compiled forward, where Dynamo splits these towers
into fragments anyway), keep what the tower saw (block input, ``cu_seqlens``, rotary
``position_embeddings``, outputs); the tower's forward hook records
:func:`qwen_internals` (per merged token, in the order the language model receives the tokens:
Qwen2.5-VL's window permutation undone) with the merged features, and a traced pre-hook on the
language model reads the current grid so that Dynamo guards on it (the grid is baked into the
prefill graph; two images can have as many tokens on different grids). The decoder graph, which
starts from the spliced embeddings in a direct forward, gathers its visual rows for the lookup
(:func:`vtp_compile.passes.vision_args.spliced_features`).

Model hooks are not patches: the modeling code is untouched and :func:`detach` removes them.
"""
from __future__ import annotations


import torch

from . import kernels  # noqa: F401  (registers torch.ops.vtp.vision_context / vision_lookup)
from .kernels import vision as _vision

_ATTR = "_vtp_vision_hooks"
_LAYER_ATTR = "_vtp_vision_layer"
_GRID_ATTR = "_vtp_vision_grid"


# the record of the last attached call lives with the op that reads it (kernels/vision.py)
Record, last_record = _vision.Record, _vision.last_record


def _qwen_tower(model):
    """The Qwen-style vision tower of ``model`` (see the module docstring), or None. Raises
    ``ValueError`` for the variants not served (read by structure)."""
    tower = getattr(model.base_model, "visual", None)
    blocks = getattr(tower, "blocks", None)
    merge = getattr(tower, "spatial_merge_size", None)
    if tower is None or blocks is None or not hasattr(tower, "merger") \
            or not hasattr(tower, "patch_embed") or not isinstance(merge, int) \
            or not hasattr(blocks[0], "norm1") or not hasattr(getattr(blocks[0], "attn", None), "qkv"):
        return None
    if hasattr(tower, "deepstack_merger_list"):
        raise ValueError("vtp: attach() does not serve vision towers with deepstack mergers (Qwen3-VL: "
                         "intermediate vision features are also added to the first decoder layers; "
                         "not checked)")
    if hasattr(tower, "pos_embed"):
        raise ValueError("vtp: attach() does not serve Qwen-style towers with a learned, interpolated "
                         "pos_embed (Qwen3.5: its internals are read correctly, but Nüwa on its hybrid "
                         "decoder differs from the oracle; not served until that is understood)")
    if hasattr(tower, "downsample"):
        raise ValueError("vtp: attach() does not serve vision towers that merge patches with a "
                         "downsampling convolution after a post-layernorm (GLM-4V; not checked)")
    return tower


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
            "embeddings and encoder.layers) or a Qwen-style one (visual with patch_embed, blocks "
            f"and merger); {type(tower).__name__} is neither")
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


def attach(model, vision_layer: int | None = None):
    """Let encoder-stage methods (Nüwa, VisionZip) read the vision tower's internals; returns
    ``model``.

    Call once, before the first compiled call::

        vtp_compile.attach(model)
        model.compile(backend="vtp", options={"method": "nuwa", "budget": 64})

    ``vision_layer``: the vision layer whose attention the internals read (CLS attention, keys,
    attention received); None: the tower's default, -2 on CLIP/SigLIP towers (the papers') and
    -1 on Qwen towers (the last block, a full-attention one, as the official Qwen port of Nüwa).
    A method option asking for another layer is an error until ``attach`` is called again with
    it (after :func:`detach`). Idempotent.

    Towers: CLIP-style (a CLS embedding) with ``vision_feature_select_strategy`` ``"default"``
    (CLS dropped) or ``"full"`` (the CLS token is the first visual token of each image and the
    internals hold it too, first column; its CLS attention is the CLS query's attention to
    itself; Nüwa keeps it as an anchor, untouched), and SigLIP-style (no CLS) with ``"full"`` or
    with no feature-select fields (PaliGemma: the projector reads ``last_hidden_state``); there
    ``cls_attn`` is the attention each patch receives (see docs/methods.md, Nüwa); and
    Qwen-style towers (Qwen2-VL, Qwen2.5-VL; internals per merged token, see
    :func:`qwen_internals`). Raises ``ValueError`` for models it cannot serve (another tower,
    another strategy, ``"default"`` on a tower without CLS, Qwen3-VL's, Qwen3.5's and GLM-4V's
    towers).
    Eager results are unchanged;
    :func:`detach` removes the hooks.
    """
    handles = getattr(model, _ATTR, None)
    if handles is not None:
        if vision_layer is not None and getattr(model, _LAYER_ATTR, -2) != vision_layer:
            raise ValueError(f"vtp: attach() already read vision layer {getattr(model, _LAYER_ATTR, -2)}; "
                             f"detach(model) first to read layer {vision_layer}")
        return model
    qwen = _qwen_tower(model)
    if qwen is not None:
        return _attach_qwen(model, qwen, -1 if vision_layer is None else vision_layer)
    vision_layer = -2 if vision_layer is None else vision_layer
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
        image = (kwargs.get("mm_encoder_outputs") or {}).get("image")
        hidden = getattr(image, "hidden_states", None)
        if hidden is None or any(h is None for h in hidden):
            return None
        with torch.no_grad():
            cls, upper, keys, received = vision_internals(layers, hidden, at, keep_cls=keep_cls,
                                                           has_cls=has_cls)
            feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in image.pooler_output])
        _vision.set_record(Record(feats, cls, upper, keys, received, grid, vision_layer))
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
        for attr in (_LAYER_ATTR, _GRID_ATTR):
            if hasattr(model, attr):
                delattr(model, attr)
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


# ---- Qwen-style towers --------------------------------------------------------------------------
def _attach_qwen(model, tower, vision_layer: int):
    """:func:`attach` for a Qwen-style tower: hooks that keep what the tower saw and record its
    internals (a :class:`Record`) with its merged features when it returns."""
    blocks = tower.blocks
    n = len(blocks)
    if not -n <= vision_layer < n:
        raise ValueError(f"vtp: vision_layer {vision_layer} is out of range for a vision tower of "
                         f"{n} blocks")
    at = vision_layer % n
    seen: dict = {}

    # every hook runs eagerly, on real tensors: under generate the tower runs eagerly anyway; in
    # a direct compiled forward each hook is a graph break inside the (already split) tower
    @torch.compiler.disable
    def start(module, args, kwargs):
        seen.clear()
        seen["grid_thw"] = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        return None

    @torch.compiler.disable
    def read_block(module, args, kwargs):
        if "grid_thw" in seen:
            seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach()
            seen["cu"] = kwargs.get("cu_seqlens")
            seen["pe"] = kwargs.get("position_embeddings")
        return None

    @torch.compiler.disable
    def keep_output(module, args, output):
        if "grid_thw" in seen:
            seen.setdefault("upper", []).append(output.detach())
        return None

    @torch.compiler.disable
    def finish(module, args, kwargs, output):
        # the images the tower just encoded are the ones the next prefill splices (the
        # prefill's lookup compares the features, so a stale record is an error, not a guess)
        if "x" in seen:
            feats = output.pooler_output.detach()
            rec = _qwen_record(tower, blocks[at], seen, feats.reshape(-1, feats.shape[-1]), vision_layer)
            _vision.set_record(rec)
            key = f"{rec.grid} {rec.features.shape[0]} {rec.refused}{rec.no_grid}"
            setattr(model, _GRID_ATTR, key)
        seen.clear()
        return None

    def guard_grid(module, args, kwargs):
        # traced, not disabled, in the frame that runs the decoder layers: Dynamo guards on this
        # string, so a prefill graph, whose grid (and, in a direct forward, visual count) is baked
        # in, is not reused for images of another grid with the same token count
        if getattr(model, _GRID_ATTR, "") == "":
            return None
        return None

    upper = range(n // 2, n)
    handles = (tower.register_forward_pre_hook(start, with_kwargs=True),
               blocks[at].register_forward_pre_hook(read_block, with_kwargs=True),
               *(blocks[i].register_forward_hook(keep_output) for i in upper),
               tower.register_forward_hook(finish, with_kwargs=True),
               getattr(model.base_model, "language_model", model).register_forward_pre_hook(
                   guard_grid, with_kwargs=True))
    setattr(model, _ATTR, handles)
    setattr(model, _LAYER_ATTR, vision_layer)
    return model


def _refusal(why: str, layer: int) -> Record:
    e = torch.empty(0)
    return Record(e, e, e, e, e, (0, 0), layer, refused=f"vtp: {why}")


def _qwen_record(tower, block, seen: dict, feats: torch.Tensor, layer: int) -> Record:
    thw = seen["grid_thw"]
    m = tower.spatial_merge_size
    grids = [(int(t), int(h) // m, int(w) // m) for t, h, w in thw.tolist()]
    if any(t != 1 for t, _, _ in grids):
        return _refusal("video inputs (temporal grid > 1): the vision internals are read for "
                        "images only", layer)
    if feats.shape[0] != sum(h * w for _, h, w in grids):
        return _refusal("the tower's merged tokens do not match its grid_thw", layer)
    if seen.get("pe") is None or seen.get("cu") is None:
        return _refusal("this Qwen-style tower passes no rotary position_embeddings / cu_seqlens "
                        "to its blocks", layer)
    with torch.no_grad():
        cls, upper, keys, received = qwen_internals(tower, block, seen["x"], seen["cu"], seen["pe"],
                                                    seen["upper"], thw)
    if len({g[1:] for g in grids}) > 1:
        # per-token internals still line up with the tokens (VisionZip); a grid does not (Nüwa)
        T = cls.shape[0]
        why = (f"images of different sizes in one batch (merged grids {sorted({g[1:] for g in grids})}"
               "): the anchor kernels take one patch grid per call; prune such batches one size at "
               "a time")
        return Record(feats, cls.view(1, T), upper.view(1, T, -1), keys.view(1, T, -1),
                      received.view(1, T), (1, T), layer, no_grid=f"vtp: {why}")
    gh, gw = grids[0][1:]
    n_img = len(grids)
    return Record(feats, cls.view(n_img, -1), upper.view(n_img, gh * gw, -1),
                  keys.view(n_img, gh * gw, -1), received.view(n_img, -1), (gh, gw), layer)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _window_order(tower, grid_thw: torch.Tensor) -> torch.Tensor | None:
    """The merge-unit permutation a windowed tower (Qwen2.5-VL: ``fullatt_block_indexes``) applies
    before its blocks (None: no windows), from the tower's own index routine."""
    if getattr(tower, "fullatt_block_indexes", None) is None or not hasattr(tower, "window_size"):
        return None
    if hasattr(tower, "get_window_index"):              # older transformers: a method
        return tower.get_window_index(grid_thw)[0]
    from transformers.vision_utils import get_vision_window_index
    return get_vision_window_index(grid_thw, tower.spatial_merge_size, tower.window_size,
                                   tower.patch_size)[0]


def qwen_internals(tower, block, x: torch.Tensor, cu_seqlens: torch.Tensor, position_embeddings,
                   outputs: list, grid_thw: torch.Tensor):
    """``(cls_attn [T], upper [T, Dv], keys [T, hd], received [T])`` float32, one entry per merged
    token (``T`` = the patches / ``spatial_merge_size²``), image after image in the order the
    language model receives them, from ``block``'s input ``x`` ``[S, Dv]`` (the order the blocks
    see: Qwen2.5-VL's window order), the ``cu_seqlens`` it attends within (whole images, or
    windows) and its rotary ``position_embeddings``:

    - ``received``: the attention each patch receives, mean over heads and over the queries of
      its segment (its image, or its window in a windowed block);
    - ``cls_attn``: the same summed over heads (the anchor score of a tower without CLS);
    - ``keys``: the block's keys before the rotary embedding, mean over heads;
    - ``upper``: the mean of the outputs of the upper half of the blocks (``outputs``);

    each averaged over the ``spatial_merge_size²`` patches the merger turns into one token.
    """
    attn = block.attn
    h = block.norm1(x)
    S = h.shape[0]
    H = attn.num_heads
    q, k, _ = attn.qkv(h).float().reshape(S, 3, H, -1).unbind(1)                  # [S, H, hd]
    keys = k.mean(1)
    cos, sin = (t.float()[:, None, :] for t in position_embeddings)
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    summed = torch.zeros(S, dtype=torch.float32, device=x.device)
    bounds = [int(b) for b in cu_seqlens.tolist()]
    for a, b in zip(bounds[:-1], bounds[1:]):
        for head in range(H):           # one head at a time: [s, s] probabilities at most
            p = ((q[a:b, head] @ k[a:b, head].T) * attn.scaling).softmax(-1)
            summed[a:b] += p.mean(0)
    unit = tower.spatial_merge_size ** 2
    per_unit = lambda t: t.reshape(S // unit, unit, *t.shape[1:]).mean(1)      # noqa: E731
    upper = torch.stack([o.float() for o in outputs]).mean(0)
    cls, upper, keys = per_unit(summed), per_unit(upper), per_unit(keys)
    order = _window_order(tower, grid_thw)
    if order is not None:
        back = torch.argsort(order.to(cls.device))
        cls, upper, keys = cls[back], upper[back], keys[back]
    return cls, upper, keys, cls / H
