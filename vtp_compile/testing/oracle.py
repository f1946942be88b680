"""An independent eager oracle: a plain loop over decoder layers, written for clarity.

It shares no code with the passes or the ops: scores, selection, gathers and the decode-time
cache semantics are re-derived here from the method definitions in METHODS.md, calling only the
model's own modules (embeddings, vision tower, decoder layers, norm, lm_head).
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import torch

from . import oracle_dcp


@dataclasses.dataclass(frozen=True)
class OracleSpec:
    """What to keep: ``method`` in {"none", "fastv", "random", "divprune", "acgr"}.

    ``site``, ``tau``, ``m``, ``iters``, ``merge``: DCP-Prune's options (``acgr``).
    """
    method: str = "none"
    budget: int | None = None
    ratio: float | None = None
    layer: int = 2
    seed: int = 0
    site: str = "layer"
    tau: float = 0.3
    m: int = 3
    iters: int = 5
    merge: bool = True

    def n_keep(self, V: int) -> int:
        if self.budget is not None:
            return min(self.budget, V)
        r = Fraction(self.ratio if self.ratio is not None else Fraction(1, 9)).limit_denominator(10_000)
        return min(V, math.ceil(V * r))

    @property
    def prune_layer(self) -> int:
        layer_site = self.method == "fastv" or (self.method == "acgr" and self.site == "layer")
        return self.layer if layer_site else 0


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _image_features(model, pixel_values):
    out = model.model.get_image_features(pixel_values=pixel_values)
    feats = getattr(out, "pooler_output", out)
    if isinstance(feats, (list, tuple)):
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
    return feats.reshape(-1, feats.shape[-1])


def _hash_scores(V, seed, row):
    """``[1, V]``: the random method's fixed hash of (row, visual index, seed)."""
    x = [math.sin(j * 12.9898 + row * 78.233 + seed * 37.719) * 43758.5453 for j in range(V)]
    return torch.tensor([[v - math.floor(v) for v in x]], dtype=torch.float64).float()


def _divprune(feats_bvd, k):
    """Greedy max-min cosine diversity, one sample at a time, as a plain list."""
    picks_all = []
    for f in feats_bvd:
        f = torch.nn.functional.normalize(f.float(), dim=-1)
        d = 1 - f @ f.T
        d = (d + d.T) * 0.5          # a mutual nearest pair ties exactly: the lower index first
        V = d.shape[0]
        nn = torch.stack([torch.cat([d[i, :i], d[i, i + 1:]]).min() if V > 1 else torch.tensor(0.)
                          for i in range(V)])
        picks = [int(nn.argmax())]
        while len(picks) < k:
            best, best_v = None, None
            for j in range(V):
                if j in picks:
                    continue
                v = min(float(d[j, p]) for p in picks)
                if best_v is None or v > best_v:
                    best, best_v = j, v
            picks.append(best)
        picks_all.append(sorted(picks))
    return picks_all


def _select_top(scores_bv, k):
    """Top-k per row, ties broken towards the lower index, returned sorted."""
    out = []
    for row in scores_bv:
        order = sorted(range(len(row)), key=lambda i: (-float(row[i]), i))
        out.append(sorted(order[:k]))
    return out


@torch.no_grad()
def oracle_forward(model, input_ids, attention_mask=None, pixel_values=None, position_ids=None,
                   spec: OracleSpec = OracleSpec(), selection=None, prompt_len=None):
    """Logits ``[B, L, V]`` of the pruned model, and the selection used (per row).

    Every row is pruned on its own (rows may hold different numbers of visual tokens, or none):
    the decoder runs one row at a time. ``selection`` (list per row of kept visual indices,
    0..V_b-1) fixes the kept set, as a decode step does; ``prompt_len``: positions from there on
    are generated tokens, which (after a pruned prefill) attend only to the kept prompt tokens in
    every layer.
    """
    lm = model.model.language_model
    B, L = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = torch.arange(L)[None].expand(B, L)
    h = lm.embed_tokens(input_ids)
    vis = input_ids == model.config.image_token_id
    if pixel_values is not None and bool(vis.any()):
        h = h.clone()
        h[vis] = _image_features(model, pixel_values).to(h.dtype)
    prompt_len = L if prompt_len is None else prompt_len
    rows, chosen = [], []
    for b in range(B):
        logits, sel = _row_forward(model, h[b:b + 1], vis[b:b + 1], attention_mask[b:b + 1],
                                   position_ids[b:b + 1], spec, b,
                                   None if selection is None else selection[b], prompt_len)
        rows.append(logits)
        chosen.append(sel)
    return torch.cat(rows), chosen


def _row_forward(model, h, vis, attention_mask, position_ids, spec, row, selection, prompt_len):
    """Row ``row`` of the batch (``B = 1`` here) through the decoder with ``spec``'s pruning;
    returns (logits, kept visual indices)."""
    lm = model.model.language_model
    L = h.shape[1]
    V = int(vis[0].sum())
    allowed = torch.tril(torch.ones(L, L, dtype=torch.bool))[None] & attention_mask.bool()[:, None, :]
    pruning = spec.method != "none" and V > 0
    K = spec.prune_layer if pruning else None
    vis_pos = [torch.nonzero(vis[0]).flatten().tolist()]
    sel = None if selection is None else [selection]
    if pruning and sel is None and K == 0:
        feats = h[0, vis_pos[0]]
        k = spec.n_keep(V)
        if spec.method == "random":
            sel = _select_top(_hash_scores(V, spec.seed, row), k)
        elif spec.method == "divprune":
            sel = _divprune(feats[None], k)
        else:  # acgr at the encoder: last prompt token's embedding against each visual feature
            D = feats.shape[-1]
            last = last_valid(attention_mask[0])
            probs = (feats.float() @ h[0, last].float() / math.sqrt(D)).softmax(0).tolist()
            sel = [oracle_dcp.dcp_select(feats, probs, k, spec.tau, spec.iters)]
    if pruning and K == 0 and spec.method == "acgr":
        h = _acgr(h, vis_pos, sel, spec)
    keep = None
    if pruning and sel is not None:
        keep = _keep_positions(vis, vis_pos, sel, L)
        allowed = _evict_for_generated(allowed, keep, prompt_len)

    cur_pos = position_ids
    entry = None
    layers = list(lm.layers)
    for i, layer in enumerate(layers):
        if pruning and i == K:
            if sel is None:  # score with layer K-1's q/k, last token, head-mean
                probs = _fastv_probs(layers[K - 1], prev_h, prev_pos, prev_allowed, lm, vis_pos)
                k = spec.n_keep(V)
                if spec.method == "acgr":
                    sel = [oracle_dcp.dcp_select(h[0, vis_pos[0]], probs[0], k, spec.tau, spec.iters)]
                else:
                    sel = _select_top(probs, k)
                keep = _keep_positions(vis, vis_pos, sel, L)
                allowed = _evict_for_generated(allowed, keep, prompt_len)
            entry = h
            if spec.method == "acgr" and K > 0:   # (the encoder site merged before layer 0)
                h = _acgr(h, vis_pos, sel, spec)
            h, cur_pos, allowed = compact(keep, h, position_ids, allowed)
        prev_h, prev_pos, prev_allowed = h, cur_pos, allowed
        cos, sin = lm.rotary_emb(h, cur_pos)
        h = layer(h, attention_mask=allowed[:, None], position_ids=cur_pos,
                  position_embeddings=(cos, sin))
        h = h[0] if isinstance(h, tuple) else h
    if entry is not None:
        h = restore(entry, h, keep)
    logits = model.lm_head(lm.norm(h))
    return logits, (sel[0] if sel is not None else [])


def compact(keep, *rows):
    """Each ``[B, L, ...]`` tensor of ``rows`` at the positions ``keep[b]`` of its row ``b``
    (an ``[B, L, L]`` mask is cut along both sequence dims)."""
    out = []
    for t in rows:
        if t.dim() == 3 and t.dtype == torch.bool:
            out.append(torch.stack([t[b][keep[b]][:, keep[b]] for b in range(t.shape[0])]))
        else:
            out.append(torch.stack([t[b, keep[b]] for b in range(t.shape[0])]))
    return out


def restore(entry, h, keep):
    """``entry`` with row ``b``'s positions ``keep[b]`` overwritten by ``h[b]``."""
    full = entry.clone()
    for b in range(entry.shape[0]):
        full[b, keep[b]] = h[b]
    return full


def _keep_positions(vis, vis_pos, selection, L):
    keep = []
    for b in range(vis.shape[0]):
        chosen = {vis_pos[b][j] for j in selection[b]}
        keep.append(torch.tensor([p for p in range(L) if not vis[b, p] or p in chosen]))
    return keep


def _evict_for_generated(allowed, keep, prompt_len):
    """Generated tokens see only kept prompt tokens in every layer (the cache was compacted)."""
    allowed = allowed.clone()
    L = allowed.shape[-1]
    for b, kb in enumerate(keep):
        dropped = torch.ones(L, dtype=torch.bool)
        dropped[kb] = False
        allowed[b, prompt_len:, :] &= ~dropped
    return allowed


def _acgr(h, vis_pos, selection, spec):
    """ACGR merge of the removed visual tokens into the kept ones (no-op with merge=False)."""
    if not spec.merge:
        return h
    h = h.clone()
    for b, pos in enumerate(vis_pos):
        h[b, pos] = oracle_dcp.acgr_merge(h[b, pos], selection[b], spec.m).to(h.dtype)
    return h


def _fastv_probs(layer, h, pos, allowed, lm, vis_pos, last=None):
    """Per row, the head-mean attention the last token pays each visual token (a list)."""
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    B, L, _ = x.shape
    hd = attn.head_dim
    q = attn.q_proj(x).view(B, L, -1, hd).transpose(1, 2)
    kk = attn.k_proj(x).view(B, L, -1, hd).transpose(1, 2)
    cos, sin = lm.rotary_emb(x, pos)
    cos, sin = cos[:, None], sin[:, None]
    q = q * cos + _rotate_half(q) * sin
    kk = kk * cos + _rotate_half(kk) * sin
    kk = kk.repeat_interleave(q.shape[1] // kk.shape[1], dim=1)
    probs = []
    for b in range(B):
        lb = last_valid(torch.diagonal(allowed[b])) if last is None else last[b]   # last real token
        logit = torch.einsum("hd,hld->hl", q[b, :, lb], kk[b]) * attn.scaling     # [H, L]
        probs.append(logit.masked_fill(~allowed[b, lb][None, :], float("-inf")).softmax(-1).mean(0))
    probs = torch.stack(probs)                                # [B, L]
    return [[float(probs[b, p]) for p in vis_pos[b]] for b in range(B)]


def last_valid(row_mask: torch.Tensor) -> int:
    """Index of the last True/1 entry of a 1-D mask: a row's last real token, whichever side
    is padded."""
    return max(i for i, v in enumerate(row_mask.tolist()) if v)


def greedy_step(model, last_logits, ids, mask):
    """One greedy decoding step as ``generate`` takes it: suppressed tokens
    (``generation_config.suppress_tokens``) never win. Returns (next tokens ``[B]``, top-2 logit
    margin ``[B]``, ``ids`` and ``mask`` extended by the new tokens)."""
    suppress = list(getattr(model.generation_config, "suppress_tokens", None) or [])
    last = last_logits.float().clone()
    last[:, suppress] = float("-inf")     # what generate's SuppressTokensLogitsProcessor does
    top2 = last.topk(2, dim=-1).values
    nxt = last.argmax(-1)
    return (nxt, top2[:, 0] - top2[:, 1], torch.cat([ids, nxt[:, None]], 1),
            torch.cat([mask, torch.ones_like(mask[:, :1])], 1))


@torch.no_grad()
def oracle_generate(model, input_ids, attention_mask, pixel_values=None, spec=OracleSpec(),
                    max_new_tokens=4):
    """Greedy decoding by re-running :func:`oracle_forward` on the growing sequence.

    Tokens in ``model.generation_config.suppress_tokens`` are never chosen, as in ``generate``.
    Returns (tokens ``[B, new]``, per-step top-2 logit margins, for recognising near ties).
    """
    ids, mask = input_ids, attention_mask
    prompt_len = ids.shape[1]
    selection, toks, margins = None, [], []
    for _ in range(max_new_tokens):
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        logits, selection = oracle_forward(model, ids, mask, pixel_values, pos, spec, selection,
                                           prompt_len)
        nxt, margin, ids, mask = greedy_step(model, logits[:, -1], ids, mask)
        toks.append(nxt)
        margins.append(margin)
    return torch.stack(toks, 1), torch.stack(margins, 1)
