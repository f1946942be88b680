"""Oracle for Nüwa, written from METHODS.md: per-sample loops over lists, two compactions.

The vision internals come from the vision tower run with eager attention and
``output_attentions=True`` (the probabilities of vision layer -2, CLS row), not from
:mod:`vtp_compile.vision_context`; anchors, pillars and the aggregation are plain loops.
Qwen-style towers (no CLS, patches merged ``spatial_merge_size²`` to one token, Qwen2.5-VL's
window permutation): :func:`qwen_internals` reads the probabilities an attention function of
its own sees, and undoes the window order with a loop written from the window definition.

``grid``: a square grid's side, or ``(rows, cols)``.
"""
from __future__ import annotations

import math

import torch

from .oracle import (_fastv_probs, _image_features, _keep_positions, _select_top, compact,
                     greedy_step, restore)


def keeps_cls(model) -> bool:
    """``vision_feature_select_strategy="full"``: each image's CLS token is spliced first."""
    return getattr(model.config, "vision_feature_select_strategy", None) == "full"


def _eager_tower(model, pixel_values):
    """The vision tower's output with every hidden state and its attention probabilities (eager
    attention for the call)."""
    tower = model.model.vision_tower
    old = tower.config._attn_implementation
    tower.config._attn_implementation = "eager"
    try:
        return tower(pixel_values, output_hidden_states=True, output_attentions=True)
    finally:
        tower.config._attn_implementation = old


@torch.no_grad()
def internals(model, pixel_values, keep_cls: bool = False):
    """``(cls [n, N], upper [n, N, Dv])`` from the vision tower's returned attentions
    (``keep_cls``: with the CLS column, first; its CLS attention is CLS's attention to itself)."""
    out = _eager_tower(model, pixel_values)
    L = len(out.attentions)
    s = 0 if keep_cls else 1
    cls = out.attentions[L - 2][:, :, 0, s:].float().sum(1)
    upper = torch.stack([h.float() for h in out.hidden_states[L // 2 + 1:]]).mean(0)[:, s:]
    return cls, upper


@torch.no_grad()
def received_internals(model, pixel_values):
    """CLS-free towers (SigLIP): ``(received [n, N], upper [n, N, Dv])``, every token a patch;
    ``received``: the attention each patch receives at vision layer -2 (the returned
    probabilities), summed over heads and averaged over the queries (docs/methods.md, Nüwa)."""
    out = _eager_tower(model, pixel_values)
    L = len(out.attentions)
    received = out.attentions[L - 2].float().sum(1).mean(1)
    upper = torch.stack([h.float() for h in out.hidden_states[L // 2 + 1:]]).mean(0)
    return received, upper


def _hw(grid) -> tuple[int, int]:
    return (grid, grid) if isinstance(grid, int) else tuple(grid)


_PROBED: list = []


def _probe_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                     **kwargs):
    """An attention function that keeps its probabilities: ``softmax(q kᵀ * scaling)``."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    logits = (query.float() @ key.float().transpose(-1, -2)) * scale
    if attention_mask is not None:
        logits = logits + attention_mask
    probs = logits.softmax(-1)
    _PROBED.append((module, probs))
    return (probs @ value.float()).to(query.dtype).transpose(1, 2).contiguous(), probs


def _window_units(grid_thw, merge: int, window: int | None) -> list[int]:
    """The natural index of each merged unit in the order a windowed tower's blocks see them:
    per image, windows of ``window x window`` units in raster order, units in raster order
    within a window (None: no windows, the natural order)."""
    order, base = [], 0
    for t, h, w in grid_thw.tolist():
        gh, gw = h // merge, w // merge
        ws = window or max(gh, gw)
        for f in range(t):
            for wr in range(0, gh, ws):
                for wc in range(0, gw, ws):
                    order += [base + (f * gh + r) * gw + c for r in range(wr, min(wr + ws, gh))
                              for c in range(wc, min(wc + ws, gw))]
        base += t * gh * gw
    return order


@torch.no_grad()
def qwen_internals(model, pixel_values, grid_thw, vision_layer: int = -1):
    """Qwen-style towers: ``(summed [T], received [T], upper [T, Dv], keys [T, hd], grid)`` per
    merged token, image after image in the language model's order. ``received``: the attention
    each patch receives in block ``vision_layer`` (the probabilities an attention function of
    our own sees, one call per image or window), mean over heads and the queries of its
    segment; ``summed``: the same summed over heads; ``keys``: the block's keys before the rotary
    embedding (its ``qkv`` output), mean over heads; ``upper``: the mean of the upper half of
    the blocks' outputs; each averaged over the merged patches. ``grid``: the merged grid, one
    for every image (None: images of different sizes)."""
    from transformers import AttentionInterface
    tower = model.model.visual
    blocks = list(tower.blocks)
    at = vision_layer % len(blocks)
    m = tower.spatial_merge_size
    grids = {(h // m, w // m) for _, h, w in grid_thw.tolist()}
    AttentionInterface.register("vtp_oracle_probe", _probe_attention)
    seen = []
    hook = blocks[at].attn.qkv.register_forward_hook(lambda mod, a, out: seen.append(out.float()))
    old = tower.config._attn_implementation
    tower.config._attn_implementation = "vtp_oracle_probe"
    _PROBED.clear()
    try:
        out = tower(pixel_values, grid_thw=grid_thw, output_hidden_states=True)
    finally:
        tower.config._attn_implementation = old
        hook.remove()
    received = torch.cat([p[0].mean(0).mean(0) for mod, p in _PROBED if mod is blocks[at].attn])
    H = blocks[at].attn.num_heads
    S = received.shape[0]
    keys = seen[0].reshape(S, 3, H, -1)[:, 1].mean(1)
    n = len(blocks)
    upper = torch.stack([h.float() for h in out.hidden_states[n // 2 + 1:]]).mean(0)
    unit = m * m
    per = [t.reshape(S // unit, unit, *t.shape[1:]).mean(1) for t in (received, upper, keys)]
    windowed = getattr(tower, "fullatt_block_indexes", None) is not None
    order = _window_units(grid_thw, m, tower.window_size // m // tower.patch_size if windowed else None)
    natural = [torch.empty_like(t) for t in per]
    for j, u in enumerate(order):
        for src, dst in zip(per, natural):
            dst[u] = src[j]
    received, upper, keys = natural
    return received * H, received, upper, keys, grids.pop() if len(grids) == 1 else None


def full_anchors(cls_row: list[float], k: int, grid: int, region: int) -> list[int]:
    """"full" strategy (docs/methods.md, Nüwa): images of ``1 + grid²`` tokens, CLS first. The CLS
    tokens are anchors first (by index); the patches get the remaining ``k`` by the region rule."""
    per = grid * grid + 1
    cls_idx = [i for i in range(len(cls_row)) if i % per == 0]
    patch_idx = [i for i in range(len(cls_row)) if i % per != 0]
    kept_cls = cls_idx[:k]
    kp = max(k - len(cls_idx), 0)
    chosen = anchors([cls_row[i] for i in patch_idx], kp, grid, region)
    return sorted(kept_cls + [patch_idx[j] for j in chosen])


def candidates(cls_row: list[float], k: int, grid: int, region: int) -> set[int]:
    """The top ``ceil(k / blocks)`` tokens of every ``region x region`` block of each image."""
    gh, gw = _hw(grid)
    V, N = len(cls_row), gh * gw
    blocks: dict[tuple, list[int]] = {}
    for i in range(V):
        r, c = (i % N) // gw, (i % N) % gw
        blocks.setdefault((i // N, r // region, c // region), []).append(i)
    n = math.ceil(k / len(blocks))
    cand = set()
    for members in blocks.values():
        cand.update(sorted(members, key=lambda i: (-cls_row[i], i))[:n])
    return cand


def anchor_order(cls_row: list[float], k: int, grid: int, region: int):
    """Sort key: candidates first, then CLS attention descending, then index."""
    cand = candidates(cls_row, k, grid, region)
    return lambda i: (i not in cand, -cls_row[i], i)


def anchors(cls_row: list[float], k: int, grid: int, region: int) -> list[int]:
    """The first ``k`` tokens in :func:`anchor_order`, sorted by index."""
    return sorted(sorted(range(len(cls_row)), key=anchor_order(cls_row, k, grid, region))[:k])


def aggregate(x: torch.Tensor, upper: torch.Tensor, chosen: list[int], grid: int, distance: float,
              pillars: float, k_rank) -> torch.Tensor:
    """Collectors (anchors below the top ``pillars`` fraction) become weighted means."""
    gh, gw = _hw(grid)
    V, N = x.shape[0], gh * gw
    d_max = math.sqrt(distance * ((gh - 1) ** 2 + (gw - 1) ** 2))
    ranked = sorted(chosen, key=k_rank)
    collectors = ranked[math.ceil(pillars * len(chosen)):]
    u = torch.nn.functional.normalize(upper.float(), dim=-1)
    out = x.clone()
    for i in collectors:
        num, den = torch.zeros(x.shape[1]), 0.0
        for j in range(V):
            if i // N != j // N:
                continue
            ri, ci, rj, cj = (i % N) // gw, (i % N) % gw, (j % N) // gw, (j % N) % gw
            d = math.hypot(ri - rj, ci - cj)
            prox = 1.0 - min(d / d_max, 1.0) if d_max > 0 else float(d == 0)
            w = 1.0 if i == j else max(float(u[i] @ u[j]), 0.0) * prox
            num += w * x[j].float()
            den += w
        out[i] = (num / den).to(x.dtype)
    return out


@torch.no_grad()
def nuwa_forward(model, input_ids, attention_mask, pixel_values, budget: int, layer: int | None = None,
                 n_anchors: int | None = None, region: int = 2, distance: float = 0.265,
                 pillars: float = 0.45, position_ids=None, selection=None, prompt_len=None):
    """Logits ``[B, L, vocab]`` and ``(anchors, kept)`` per row (indices into the visual tokens
    and into the anchors). ``selection`` fixes both, as a decode step does."""
    lm = model.model.language_model
    layers = list(lm.layers)
    K = layer if layer is not None else max(1, len(layers) // 2)
    B, L = input_ids.shape
    if position_ids is None:
        position_ids = torch.arange(L)[None].expand(B, L)
    prompt_len = L if prompt_len is None else prompt_len
    h = lm.embed_tokens(input_ids)
    vis = input_ids == model.config.image_token_id
    V = int(vis[0].sum())
    allowed = torch.tril(torch.ones(L, L, dtype=torch.bool))[None] & attention_mask.bool()[:, None, :]
    vis_pos = [torch.nonzero(vis[b]).flatten().tolist() for b in range(B)]
    if V == 0:
        sel1, keep1 = None, None
    else:
        h = h.clone()
        h[vis] = _image_features(model, pixel_values).to(h.dtype)
        tower_cfg = model.config.vision_config
        grid = tower_cfg.image_size // tower_cfg.patch_size
        full = keeps_cls(model)
        cls, upper = internals(model, pixel_values, full)
        cls, upper = cls.reshape(B, V), upper.reshape(B, V, -1)
        k1 = min(V, n_anchors if n_anchors is not None else math.ceil(budget * 7 / 4))
        pick = full_anchors if full else anchors
        sel1 = selection[0] if selection else [pick(cls[b].tolist(), k1, grid, region) for b in range(B)]
        per = grid * grid + 1
        for b in range(B):
            row = cls[b].tolist()
            # the patches (with "full", every visual index but each image's first, the CLS token)
            patch = [j for j in range(V) if not (full and j % per == 0)]
            chosen = [patch.index(j) for j in sel1[b] if j in patch]
            if len(chosen) == len(patch):
                continue        # all patches anchors: nothing removed, nothing aggregated
            prow = [row[j] for j in patch]
            kp = len(chosen) if full else k1
            pos = [vis_pos[b][j] for j in patch]
            h[b, pos] = aggregate(h[b, pos], upper[b, patch], chosen, grid, distance, pillars,
                                  anchor_order(prow, kp, grid, region))
        keep1 = _keep_positions(vis, vis_pos, sel1, L)
    entry0 = h
    sel2 = selection[1] if selection else None
    if keep1 is not None:
        h, pos, allowed, vis1 = compact(keep1, h, position_ids, allowed, vis)
    else:
        pos, vis1 = position_ids, vis
    entryK = keep2 = None
    if keep1 is not None and sel2 is not None and prompt_len < L:
        # decode: generated tokens see only the finally kept prompt tokens, in every layer
        allowed = allowed.clone()
        n_gen = L - prompt_len
        for b in range(B):
            vpos1 = torch.nonzero(vis1[b]).flatten().tolist()
            dropped = [p for j, p in enumerate(vpos1) if j not in set(sel2[b])]
            allowed[b, allowed.shape[1] - n_gen:, dropped] = False
    for i, lay in enumerate(layers):
        if i == K and keep1 is not None:
            vpos1 = [torch.nonzero(vis1[b]).flatten().tolist() for b in range(B)]
            if sel2 is None:
                probs = _fastv_probs(layers[K - 1], prev_h, prev_pos, prev_allowed, lm, vpos1)
                sel2 = _select_top(probs, min(budget, len(vpos1[0])))
            keep2 = _keep_positions(vis1, vpos1, sel2, h.shape[1])
            entryK = h
            h, pos, allowed = compact(keep2, h, pos, allowed)
        prev_h, prev_pos, prev_allowed = h, pos, allowed
        cos, sin = lm.rotary_emb(h, pos)
        h = lay(h, attention_mask=allowed[:, None], position_ids=pos, position_embeddings=(cos, sin))
        h = h[0] if isinstance(h, tuple) else h
    if keep2 is not None:
        h = restore(entryK, h, keep2)
    if keep1 is not None:
        h = restore(entry0, h, keep1)
    return model.lm_head(lm.norm(h)), (sel1, sel2)


@torch.no_grad()
def nuwa_generate(model, input_ids, attention_mask, pixel_values, budget: int, max_new_tokens=4,
                  **opts):
    """Greedy tokens ``[B, new]`` and per-step top-2 margins, re-running :func:`nuwa_forward`
    on the growing sequence with the prefill's selections fixed."""
    ids, mask = input_ids, attention_mask
    prompt_len = ids.shape[1]
    selection, toks, margins = None, [], []
    for _ in range(max_new_tokens):
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        logits, selection = nuwa_forward(model, ids, mask, pixel_values, budget, position_ids=pos,
                                         selection=selection, prompt_len=prompt_len, **opts)
        if selection[0] is None:
            selection = None
        nxt, margin, ids, mask = greedy_step(model, logits[:, -1], ids, mask)
        toks.append(nxt)
        margins.append(margin)
    return torch.stack(toks, 1), torch.stack(margins, 1)
