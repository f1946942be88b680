"""Oracle for DyCoke's stage 2 (decode-time selection of visual KV entries), written from the
paper's rule with masks instead of a cache.

Every step re-runs the whole sequence. Tokens stage 1 removed (``kept``: the visual indices it
kept per row) are nobody's keys. A generated token sees every kept prompt token in layers below
``layer``; from ``layer`` on, the non-visual tokens and the visual tokens picked at its own step:
the token fed at decode step ``s`` picks with its own head-mean attention at layer
``layer - 1``, re-picking the top ``max(1, floor(ratio * n))`` when the cosine similarity of its
attention over the visual tokens with the previous step's is below ``similarity`` (always on the
first decode step), else keeping the previous pick.
"""
from __future__ import annotations

import math

import torch

from .oracle import _fastv_probs, _image_features, greedy_step


def _top(scores, cand, k):
    return sorted(cand, key=lambda i: (-scores[i], i))[:k]


@torch.no_grad()
def decode_select_generate(model, input_ids, attention_mask, pixel_values, kept=None, ratio=0.2,
                           layer=3, similarity=0.9, max_new_tokens=4):
    """Greedy tokens ``[B, new]``, top-2 margins, and the picks (visual indices per row, one
    list per decode step)."""
    lm = model.model.language_model
    layers = list(lm.layers)
    K = layer
    ids, mask = input_ids, attention_mask
    B, P0 = ids.shape
    vis = ids == model.config.image_token_id
    vis_pos = [torch.nonzero(vis[b]).flatten().tolist() for b in range(B)]
    kept = [set(range(len(vis_pos[b]))) if kept is None else set(kept[b]) for b in range(B)]
    count = [max(1, math.floor(len(kept[b]) * ratio)) if kept[b] else 0 for b in range(B)]
    feats = _image_features(model, pixel_values)
    picks: list[list[list[int]]] = []          # picks[g][b]: picked at the step that fed token g
    prev: list = [None] * B
    toks, margins = [], []
    for step in range(max_new_tokens):
        T = ids.shape[1]
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        h = lm.embed_tokens(ids).clone()
        h[torch.cat([vis, torch.zeros(B, T - P0, dtype=torch.bool)], 1)] = feats.to(h.dtype)
        eye = torch.eye(T, dtype=torch.bool)[None]
        base = torch.tril(torch.ones(T, T, dtype=torch.bool))[None] & mask.bool()[:, None, :]
        dropped = torch.zeros(B, T, dtype=torch.bool)
        for b in range(B):
            for j, p in enumerate(vis_pos[b]):
                dropped[b, p] = j not in kept[b]
        full = (base & ~dropped[:, None, :]) | eye          # never an all-masked row

        def late():
            a = full.clone()
            for b in range(B):
                for g in range(T - P0):
                    for j, p in enumerate(vis_pos[b]):
                        if j not in picks[g][b]:
                            a[b, P0 + g, p] = False
            return a

        x = h
        for i, lyr in enumerate(layers):
            if i == K - 1 and step >= 1:
                probs = _fastv_probs(lyr, x, pos, full, lm, vis_pos, [T - 1] * B)
                new = []
                for b in range(B):
                    att = torch.tensor([probs[b][j] if j in kept[b] else 0.0
                                        for j in range(len(vis_pos[b]))], dtype=torch.float64)
                    renew = prev[b] is None or float(torch.nn.functional.cosine_similarity(
                        att, prev[b], dim=0, eps=1e-12)) < similarity
                    new.append(sorted(_top(probs[b], sorted(kept[b]), count[b])) if renew
                               else picks[-1][b])
                    prev[b] = att
                picks.append(new)
            a = full if i < K or step == 0 else late()
            cos, sin = lm.rotary_emb(x, pos)
            out = lyr(x, attention_mask=a[:, None], position_ids=pos, position_embeddings=(cos, sin))
            x = out[0] if isinstance(out, tuple) else out
        nxt, margin, ids, mask = greedy_step(model, model.lm_head(lm.norm(x[:, -1])), ids, mask)
        toks.append(nxt)
        margins.append(margin)
    return torch.stack(toks, 1), torch.stack(margins, 1), picks
