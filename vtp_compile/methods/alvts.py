"""ALVTS (arXiv 2606.14277): adaptive layer-wise visual token selection with skip and reintegration.

From layer ``layer`` (L0) on, every decoder layer routes: a low-rank selector scores the visual
tokens, the top k go through the layer, the others skip it unchanged, and both streams are
reintegrated in position order before the next layer. No visual token is dropped for good.

Selector, our reading of "importance-consistency constrained low-rank approximation": per head
``h`` the bilinear form of the layer's attention logits without RoPE,
``M_h = (W_q^h diag(w_norm))^T (W_k^g diag(w_norm))``, truncated to rank ``r`` by SVD at compile
time; scores are the head-mean softmax over visual tokens of
``scale * (x_last A_h) . (x_v B_h)`` with ``x = h / rms(h)``. ``rank="auto"`` picks the smallest
``r <= rank_cap`` whose top-k agrees with the full-rank selector on >= ``consistency`` of the
tokens, on the example inputs' hidden states at that layer.

A biased q projection (Qwen2-VL, Qwen2.5-VL, Qwen2 text models) adds a term linear in the key
token: ``(W_q xn_t + b_q) . (W_k xn_s + b_k)`` with ``xn = w_norm * x`` has, besides the bilinear
part, ``c_h . x_s`` with ``c_h = diag(w_norm) W_k^g^T b_q^h`` (the ``b_k`` terms are constant over
the keys ``s`` of one query, so they leave the softmax unchanged). It is the selector's third
factor ``C`` ``[H, D]`` (scale folded in, never truncated).
"""
from __future__ import annotations

import logging

import torch

from ..sites import RouteSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import register
from ..errors import OptionError

log = logging.getLogger("vtp_compile")
EPS = 1e-6


def bilinear_factors(wq, wk, w_norm, heads: int, kv_heads: int):
    """Exact per-head factors ``(A, B, S)``: ``M_h = A_h diag(S_h) B_h^T``, sorted by S."""
    D = wq.shape[1]
    hd = wq.shape[0] // heads
    wqn = (wq.double() * w_norm.double()).view(heads, hd, D)
    wkn = (wk.double() * w_norm.double()).view(kv_heads, hd, D)
    wkn = wkn.repeat_interleave(heads // kv_heads, dim=0)
    qp, rp = torch.linalg.qr(wqn.transpose(1, 2))            # [H, D, hd], [H, hd, hd]
    qq, rq = torch.linalg.qr(wkn.transpose(1, 2))
    u, s, vh = torch.linalg.svd(rp @ rq.transpose(1, 2))      # core [H, hd, hd]
    return qp @ u, qq @ vh.transpose(1, 2), s


def truncate(A, B, S, r: int, scale: float):
    """Rank-``r`` factors ``[H, D, r]`` (float32): singular values split evenly, the softmax
    scale folded into ``A``."""
    root = S[:, :r].sqrt()[:, None, :]
    return (A[..., :r] * root * scale).float(), (B[..., :r] * root).float()


def bias_factor(wk, w_norm, bq, heads: int, kv_heads: int, scale: float):
    """The q bias's key-linear term per head, ``C_h = scale * diag(w_norm) W_k^g^T b_q^h``,
    ``[H, D]`` (float32)."""
    D = wk.shape[1]
    hd = wk.shape[0] // kv_heads
    wkn = (wk.double() * w_norm.double()).view(kv_heads, hd, D)
    wkn = wkn.repeat_interleave(heads // kv_heads, dim=0)        # [H, hd, D]
    c = torch.einsum("he,hed->hd", bq.double().view(heads, hd), wkn)
    return (c * scale).float()


def selector_scores(hidden, visual_mask, qpos, A, B, C=None):
    """Head-mean softmax over visual tokens of the low-rank logits of each row's last token
    (at ``qpos``), ``[B, L]``; ``C``: the q bias's term linear in the key token (or None)."""
    x = hidden.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
    last = torch.gather(x, 1, qpos.view(-1, 1, 1).expand(x.shape[0], 1, x.shape[-1]))[:, 0]
    qa = torch.einsum("bd,hdr->bhr", last, A)                 # [B, H, r]
    kb = torch.einsum("bld,hdr->bhlr", x, B)                  # [B, H, L, r]
    logits = torch.einsum("bhr,bhlr->bhl", qa, kb)
    if C is not None:
        logits = logits + torch.einsum("bld,hd->bhl", x, C)
    logits = logits.masked_fill(~visual_mask[:, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1).nan_to_num(0.0).mean(1)


def choose_rank(A, B, S, scale, calib, cap: int, consistency: float, C=None) -> int:
    """Smallest rank whose top-k matches the full-rank selector's on >= ``consistency`` of the
    tokens of every calibration sample; ``cap`` when none does or there is no sample. ``C`` (the
    q bias term) is part of both: only the bilinear part is truncated."""
    full = S.shape[1]
    cap = min(cap, full)
    if not calib:
        return cap
    Af, Bf = truncate(A, B, S, full, scale)
    exact = [selector_scores(h, m, qp, Af, Bf, C) for h, m, qp, _ in calib]
    for r in range(1, cap + 1):
        Ar, Br = truncate(A, B, S, r, scale)
        if all(top_overlap(selector_scores(h, m, qp, Ar, Br, C), ref, m, k) >= consistency
               for (h, m, qp, k), ref in zip(calib, exact)):
            return r
    return cap


def top_overlap(a, b, mask, k: int) -> float:
    """Fraction of the top-``k`` visual tokens (per row) that ``a`` and ``b`` share."""
    k = max(1, min(int(k), int(mask.sum(-1).min())))
    ta = torch.topk(a.masked_fill(~mask, -1.0), k, dim=-1).indices
    tb = torch.topk(b.masked_fill(~mask, -1.0), k, dim=-1).indices
    inter = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(ta, tb))
    return inter / (k * a.shape[0])


def builder(rank, cap: int, consistency: float):
    """``build(wq, wk, w_norm, heads, kv_heads, calib, bq=None)``: the selector's factors,
    ``(A, B)``, or ``(A, B, C)`` with a q bias ``bq``."""
    def build(wq, wk, w_norm, heads, kv_heads, calib, bq=None):
        A, B, S = bilinear_factors(wq, wk, w_norm, heads, kv_heads)
        scale = (wq.shape[0] // heads) ** -0.5
        C = None if bq is None else bias_factor(wk, w_norm, bq, heads, kv_heads, scale)
        r = rank if rank != "auto" else choose_rank(A, B, S, scale, calib, cap, consistency, C)
        factors = truncate(A, B, S, min(r, S.shape[1]), scale)
        return factors if C is None else (*factors, C)
    return build


@method_options
class ALVTSOptions(MethodOptions):
    layer: int = opt(2, "first routed decoder layer (every later layer routes too)")
    rank: int | str = opt("auto", "rank of the low-rank selector, or 'auto' (calibrated on the example inputs)")
    rank_cap: int = opt(16, "largest rank 'auto' may choose")
    consistency: float = opt(0.9, "top-k agreement with full attention that 'auto' asks for, in (0, 1]")

    def check(self):
        self.check_int("layer", lo=0)
        self.check_int("rank_cap", lo=1)
        if self.rank != "auto":
            self.check_int("rank", lo=1)
        c = self.consistency
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
            raise OptionError(f"vtp: option 'consistency' must be in (0, 1], got {c!r}")


@register
class ALVTS(Method):
    """ALVTS: per-layer routing of the top-k visual tokens by a low-rank selector."""
    name = "alvts"
    paper = "arXiv 2606.14277"
    options = ALVTSOptions

    def sites(self, cfg, num_layers):
        p = cfg.params
        if not 0 <= p["layer"] < num_layers:
            raise OptionError(f"vtp: layer {p['layer']} is out of range; this model has "
                             f"{num_layers} decoder layers, so the layer must be in "
                             f"[0, {num_layers - 1}]")
        build = builder(p["rank"], p["rank_cap"], float(p["consistency"]))
        return [RouteSite(layer=l, keep=cfg.keep, build=build, score=selector_scores, name="alvts",
                          method="alvts")
                for l in range(p["layer"], num_layers)]
