"""Oracle for DSTP generation, written from METHODS.md with masks instead of compaction.

Every step re-runs the whole sequence. A token that is pruned is simply never attended to;
the active set's history decides what each generated token saw: the token fed at decode step
``s`` sees active set ``A[s-1]`` in layers < K and ``A[s]`` (re-scored at layer K-1 by its own
query) in layers >= K. Prompt tokens after the site see text + active + reserve, except that no
non-reserve token sees a reserve token.
"""
from __future__ import annotations

import torch

from .oracle import _fastv_probs, _image_features, greedy_step, last_valid


def _top(scores, cand, k):
    return sorted(cand, key=lambda i: (-scores[i], i))[:k]


@torch.no_grad()
def dstp_generate(model, input_ids, attention_mask, pixel_values, budget, reserve=None, layer=2,
                  tau=0.2, max_new_tokens=4):
    """Greedy tokens ``[B, new]``, top-2 margins, and the active sets (visual indices per row)."""
    lm = model.model.language_model
    layers = list(lm.layers)
    K = layer
    ids, mask = input_ids, attention_mask
    B, P0 = ids.shape
    vis = ids == model.config.image_token_id
    V = int(vis[0].sum())
    vis_pos = [torch.nonzero(vis[b]).flatten().tolist() for b in range(B)]
    k = min(budget, V)
    r = min(k if reserve is None else reserve, V - k)
    feats = _image_features(model, pixel_values)
    hist: list[list[list[int]]] = []          # hist[s][b]: active visual indices after step s
    res: list[list[int]] = []                 # reserve visual indices per row
    toks, margins = [], []
    for step in range(max_new_tokens):
        T = ids.shape[1]
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        h = lm.embed_tokens(ids).clone()
        h[torch.cat([vis, torch.zeros(B, T - P0, dtype=torch.bool)], 1)] = feats.to(h.dtype)
        base = torch.tril(torch.ones(T, T, dtype=torch.bool))[None] & mask.bool()[:, None, :]
        base = base | torch.eye(T, dtype=torch.bool)[None]     # never an all-masked row

        def cols(b, active):
            """Prompt columns a generated token may see with ``active``: non-visual + active."""
            c = torch.ones(T, dtype=torch.bool)
            for j, p in enumerate(vis_pos[b]):
                c[p] = j in active
            return c

        def allowed(group):
            a = base.clone()
            for b in range(B):
                kept = set(hist[0][b]) | set(res[b])
                keep_col = torch.ones(T, dtype=torch.bool)
                res_col = torch.zeros(T, dtype=torch.bool)
                for j, p in enumerate(vis_pos[b]):
                    keep_col[p] = j in kept
                    res_col[p] = j in res[b]
                for q in range(T):
                    if q < P0:
                        if group == 1:
                            a[b, q] &= keep_col | (torch.arange(T) == q)
                            if not res_col[q]:
                                a[b, q] &= ~res_col
                    else:
                        g = q - P0                      # generated token g, fed at step g + 1
                        a[b, q] &= cols(b, set(hist[g if group == 0 else g + 1][b]))
            return a

        allowed0 = base if step == 0 else allowed(0)
        x = h
        for i, lyr in enumerate(layers):
            if i == K - 1:
                if step == 0:
                    probs = _fastv_probs(lyr, x, pos, base, lm, vis_pos,
                                         [last_valid(mask[b]) for b in range(B)])
                    order = [_top(probs[b], range(V), k + r) for b in range(B)]
                    hist.append([sorted(o[:k]) for o in order])
                    res = [sorted(o[k:]) for o in order]
                else:
                    row = allowed0.clone()
                    for b in range(B):
                        row[b, -1, :P0] = cols(b, set(hist[0][b]) | set(res[b]))[:P0]
                    probs = _fastv_probs(lyr, x, pos, row, lm, vis_pos, [T - 1] * B)
                    new = []
                    for b in range(B):
                        act, cand = hist[-1][b], sorted(set(hist[0][b]) | set(res[b]))
                        best = _top(probs[b], cand, k)
                        shift = 1 - sum(probs[b][j] for j in act) / max(sum(probs[b][j] for j in best), 1e-30)
                        new.append(sorted(best) if shift > tau else act)
                    hist.append(new)
            a = allowed0 if i < K else allowed(1)
            cos, sin = lm.rotary_emb(x, pos)
            out = lyr(x, attention_mask=a[:, None], position_ids=pos, position_embeddings=(cos, sin))
            x = out[0] if isinstance(out, tuple) else out
        nxt, margin, ids, mask = greedy_step(model, model.lm_head(lm.norm(x[:, -1])), ids, mask)
        toks.append(nxt)
        margins.append(margin)
    return torch.stack(toks, 1), torch.stack(margins, 1), hist
