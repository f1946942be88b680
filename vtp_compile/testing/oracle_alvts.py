"""Oracle for ALVTS, written from METHODS.md: per-layer routing in a plain loop.

The low-rank selector is rebuilt here from each layer's modules the direct way (the full
``D x D`` bilinear matrix per head, ``torch.linalg.svd``), scores are per-sample lists, and
routing gathers the routed subsequence, runs the layer on it and writes it back.
"""
from __future__ import annotations

import torch

from .oracle import OracleSpec, _image_features, greedy_step, last_valid


def lowrank(layer, heads: int, kv_heads: int, rank: int):
    """Per head ``(A, B)`` with ``A B^T`` the best rank-``rank`` approximation of ``M_h``."""
    attn = layer.self_attn
    wq, wk = attn.q_proj.weight.double(), attn.k_proj.weight.double()
    w = layer.input_layernorm.weight.double()
    hd = wq.shape[0] // heads
    out = []
    for h in range(heads):
        g = h // (heads // kv_heads)
        M = (wq[h * hd:(h + 1) * hd] * w).T @ (wk[g * hd:(g + 1) * hd] * w)
        U, S, Vh = torch.linalg.svd(M)
        r = min(rank, hd)
        out.append((U[:, :r] * S[:r].sqrt(), Vh[:r].T * S[:r].sqrt()))
    return out, hd ** -0.5


def bias_terms(layer, heads: int, kv_heads: int):
    """Per head the q bias's term linear in the key token, ``c_h = (W_k^g diag(w))^T b_q^h``
    (``(W_q xn + b_q) . (W_k xn_s + b_k)``: the ``b_k`` terms do not depend on the key ``s``);
    None without a q bias."""
    attn = layer.self_attn
    if getattr(attn.q_proj, "bias", None) is None:
        return None
    wk, bq = attn.k_proj.weight.double(), attn.q_proj.bias.double()
    w = layer.input_layernorm.weight.double()
    hd = wk.shape[0] // kv_heads
    return [(wk[(h // (heads // kv_heads)) * hd:(h // (heads // kv_heads) + 1) * hd] * w).T
            @ bq[h * hd:(h + 1) * hd] for h in range(heads)]


def selector(h_row: torch.Tensor, vis_pos: list[int], factors, scale, last: int = -1,
             bias=None) -> list[float]:
    """Head-mean softmax over the visual positions of the low-rank logits of the token at
    ``last`` (the row's last real token); ``bias``: :func:`bias_terms` (added untruncated)."""
    x = h_row.double()
    x = x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    per_head = []
    for h, (A, B) in enumerate(factors):
        logits = torch.stack([(x[last] @ A) @ (x[p] @ B) + (0 if bias is None else x[p] @ bias[h])
                              for p in vis_pos]) * scale
        per_head.append(logits.softmax(0))
    return torch.stack(per_head).mean(0).tolist()


def _top(scores, k):
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


@torch.no_grad()
def alvts_forward(model, ids, mask, pixel_values, spec: OracleSpec, rank: int, routes=None,
                  prompt_len=None):
    """Logits and the routed visual indices per layer (``{layer: [per row]}``)."""
    lm = model.model.language_model
    cfg = model.config.text_config
    layers = list(lm.layers)
    B, T = ids.shape
    P0 = T if prompt_len is None else prompt_len
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    vis = torch.zeros(B, T, dtype=torch.bool)
    vis[:, :P0] = ids[:, :P0] == model.config.image_token_id
    V = int(vis[0].sum())
    vis_pos = [torch.nonzero(vis[b]).flatten().tolist() for b in range(B)]
    h = lm.embed_tokens(ids).clone()
    if V:
        h[vis] = _image_features(model, pixel_values).to(h.dtype)
    base = torch.tril(torch.ones(T, T, dtype=torch.bool))[None] & mask.bool()[:, None, :]
    L0 = spec.layer
    routes = {} if routes is None else routes
    k = spec.n_keep(V) if V else 0
    for i, layer in enumerate(layers):
        cos, sin = lm.rotary_emb(h, pos)
        if V == 0 or i < L0:
            a = base.clone()
            if V and routes:     # generated tokens: layers < L0 cache layer L0's routed set
                for b in range(B):
                    for j, p in enumerate(vis_pos[b]):
                        if j not in routes[L0][b]:
                            a[b, P0:, p] = False
            out = layer(h, attention_mask=a[:, None], position_ids=pos, position_embeddings=(cos, sin))
            h = out[0] if isinstance(out, tuple) else out
            continue
        if i not in routes:
            factors, scale = lowrank(layer, cfg.num_attention_heads, cfg.num_key_value_heads, rank)
            bias = bias_terms(layer, cfg.num_attention_heads, cfg.num_key_value_heads)
            routes[i] = [_top(selector(h[b], vis_pos[b], factors, scale, last_valid(mask[b]), bias), k)
                         for b in range(B)]
        new = h.clone()
        for b in range(B):
            chosen = {vis_pos[b][j] for j in routes[i][b]}
            keep = torch.tensor([p for p in range(T) if not vis[b, p] or p in chosen])
            sub = layer(h[b:b + 1, keep], attention_mask=base[b:b + 1][:, keep][:, :, keep][:, None],
                        position_ids=pos[b:b + 1, keep],
                        position_embeddings=(cos[b:b + 1, keep], sin[b:b + 1, keep]))
            new[b, keep] = (sub[0] if isinstance(sub, tuple) else sub)[0]
        h = new
    return model.lm_head(lm.norm(h)), routes


@torch.no_grad()
def alvts_generate(model, ids, mask, pixel_values, spec: OracleSpec, rank: int, max_new_tokens=4):
    """Greedy tokens, top-2 margins and the prefill's routes; routing is fixed at prefill."""
    P0 = ids.shape[1]
    routes, toks, margins = None, [], []
    for _ in range(max_new_tokens):
        logits, routes = alvts_forward(model, ids, mask, pixel_values, spec, rank, routes, P0)
        nxt, margin, ids, mask = greedy_step(model, logits[:, -1], ids, mask)
        toks.append(nxt)
        margins.append(margin)
    return torch.stack(toks, 1), torch.stack(margins, 1), routes
