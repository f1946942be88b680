"""Oracle pieces for DCP-Prune, one sample at a time, written from METHODS.md (not from the ops).

Plain Python loops over tokens and clusters: slow, but obviously what the method says.
"""
from __future__ import annotations

import math

import torch

# Near-ties are compared at a fixed precision (METHODS.md leaves it open; the ops do the same so
# that every backend ranks alike): cosines on a 1/4096 grid, scores at 12 significant bits,
# both rounded half up (in magnitude).


def grid(cos: float) -> float:
    return math.floor(cos * 4096 + 0.5) / 4096


def round_score(x: float) -> float:
    if x == 0 or math.isinf(x):
        return x
    m, e = math.frexp(x)                     # x = m * 2**e, 0.5 <= |m| < 1
    return math.copysign(math.floor(abs(m) * 4096 + 0.5), m) * 2.0 ** (e - 12)


def _top(scores: list[float], k: int) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def kappa(feats: torch.Tensor, kept: list[int]) -> float:
    """||μ_f - μ_k|| / ||μ_f|| + | ||σ_f|| - ||σ_k|| | / ||σ_f|| (population std per channel)."""
    full, sub = feats.double(), feats.double()[kept]
    mu_f, mu_k = full.mean(0), sub.mean(0)
    sd_f = ((full - mu_f) ** 2).mean(0).sqrt()
    sd_k = ((sub - mu_k) ** 2).mean(0).sqrt()
    eps = 1e-6
    return float((mu_f - mu_k).norm() / (mu_f.norm() + eps)
                 + (sd_f.norm() - sd_k.norm()).abs() / (sd_f.norm() + eps))


def tatcs(feats: torch.Tensor, scores: list[float], k: int, iters: int) -> list[int]:
    """k clusters by spherical k-means seeded with the top-k by score; best-scored member each."""
    V = feats.shape[0]
    f = torch.nn.functional.normalize(feats.double(), dim=-1)
    cents = [f[i] for i in _top(scores, k)]
    for it in range(iters + 1):
        assign = []
        for v in range(V):
            sims = [grid(float(f[v] @ c)) for c in cents]
            assign.append(max(range(len(cents)), key=lambda j: (sims[j], -j)))
        if it == iters:
            break
        for j in range(len(cents)):
            members = [v for v in range(V) if assign[v] == j]
            if members:
                cents[j] = torch.nn.functional.normalize(f[members].sum(0), dim=0)
    picks = set()
    for j in range(len(cents)):
        members = [v for v in range(V) if assign[v] == j]
        if members:
            picks.add(max(members, key=lambda v: (scores[v], -v)))
    ranked = [2.0 + s if v in picks else s for v, s in enumerate(scores)]
    return _top(ranked, k)


def dcp_select(feats: torch.Tensor, scores: list[float], k: int, tau: float, iters: int) -> list[int]:
    """Base top-k, replaced by the TATCS selection when κ(base) > tau. Sorted indices."""
    scores = [round_score(s) for s in scores]
    base = _top(scores, k)
    if kappa(feats, base) > tau:
        return sorted(tatcs(feats, scores, k, iters))
    return sorted(base)


def acgr_merge(x: torch.Tensor, kept: list[int], m: int) -> torch.Tensor:
    """Each removed row's features flow into its m most cosine-similar kept rows."""
    x = x.double()
    f = torch.nn.functional.normalize(x, dim=-1)
    num = {a: x[a].clone() for a in kept}
    den = {a: 1.0 for a in kept}
    for c in range(x.shape[0]):
        if c in num:
            continue
        sims = sorted(((float(f[c] @ f[a]), a) for a in kept), key=lambda t: (-grid(t[0]), t[1]))[:m]
        w = torch.softmax(torch.tensor([s for s, _ in sims], dtype=torch.float64), 0)
        for wi, (_, a) in zip(w.tolist(), sims):
            num[a] += wi * x[c]
            den[a] += wi
    out = x.clone()
    for a in kept:
        out[a] = num[a] / den[a]
    return out
