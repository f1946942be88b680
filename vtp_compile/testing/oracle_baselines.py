"""Oracle pieces for the standard baselines (PDrop, DART, VisionZip, CDPruner, SparseVLM), one
sample at a time, written from METHODS.md and notes/baselines.md, not from the ops.

Plain Python loops over tokens: slow, but obviously what each method says. Ties go to the lower
index everywhere, as in the ops.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch


def _top(scores, k):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def last_real(row: torch.Tensor) -> int:
    """The last position of a row's real-token mask."""
    return max(i for i, v in enumerate(row.tolist()) if v)


# ---- PDrop -----------------------------------------------------------------------------------
def pdrop_default_layers(L: int) -> list[int]:
    """A quarter, a half, three quarters of the depth, rounded half up."""
    out = []
    for q in (1, 2, 3):
        x = math.floor(q * L / 4 + 0.5)
        if x < L and x not in out:
            out.append(x)
    return out


def pdrop_lambda(target: float, layers, L: int) -> float:
    """The per-stage ratio whose layer average is ``target`` (a fraction of V), by bisection."""
    if target >= 1.0:
        return 1.0
    bounds = list(layers) + [L]
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) * 0.5
        avg, p = float(bounds[0]), 1.0
        for s in range(1, len(bounds)):
            p = p * mid
            avg = avg + float(bounds[s] - bounds[s - 1]) * p
        if avg / float(L) <= target:
            lo = mid
        else:
            hi = mid
    return lo


def pdrop_count(V: int, stage: int, layers, L: int, budget=None, ratio=None) -> int:
    """Stage ``stage`` (1-based) keeps ``max(1, floor(V lam^stage))``."""
    if budget is not None:
        target = float(budget) / float(max(V, 1))
    else:
        r = Fraction(ratio if ratio is not None else Fraction(1, 9)).limit_denominator(10_000)
        target = r.numerator / r.denominator
    lam = pdrop_lambda(target, layers, L)
    p = 1.0
    for _ in range(stage):
        p = p * lam
    return max(1, math.floor(float(V) * p))


# ---- DART ------------------------------------------------------------------------------------
def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm().clamp(min=1e-12) * b.norm().clamp(min=1e-12)))


def dart_select(norms: list[float], hidden: torch.Tensor, visual: list[int], text_after: list[int],
                text_all: list[int], k: int, pivots: int) -> list[int]:
    """DART for one row: positions of the ``k`` retained visual tokens.

    ``norms[p]``: key L1 norm at position ``p``; ``hidden`` ``[L, D]``; ``visual``: the row's
    visual positions; ``text_after``/``text_all``: its text positions after the image / all.
    """
    k = min(k, len(visual))
    by_norm = lambda cand: sorted(cand, key=lambda p: (-norms[p], p))      # noqa: E731
    img_piv = by_norm(visual)[:min(pivots, k)]
    pool_t = text_after if text_after else text_all
    txt_piv = by_norm(pool_t)[:pivots]
    piv = sorted(img_piv + txt_piv)
    T = (k - len(img_piv)) // len(piv) if piv else 0
    kept = list(img_piv)
    pool = [p for p in visual if p not in img_piv]
    for pv in piv:
        ranked = sorted(pool, key=lambda j: (_cos(hidden[pv], hidden[j]), j))
        take = ranked[:T]
        kept += take
        pool = [p for p in pool if p not in take]
    if len(kept) < k:
        worst = {j: max(_cos(hidden[j], hidden[r]) for r in kept) for j in pool}
        kept += sorted(pool, key=lambda j: (worst[j], j))[:k - len(kept)]
    return sorted(kept)


# ---- VisionZip -------------------------------------------------------------------------------
@torch.no_grad()
def visionzip_internals(model, pixel_values, score: str = "cls", vision_layer: int = -2):
    """``(dominant [n*N], keys [n*N, hd])`` image after image, CLS dropped (kept, first, with
    ``vision_feature_select_strategy="full"``), read from the vision
    tower run eagerly with ``output_attentions=True`` (the attention probabilities it returns)
    and a hook on vision layer ``vision_layer``'s ``k_proj`` (its keys, mean over heads)."""
    tower = model.model.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    at = vision_layer % len(layers)
    attn = layers[at].self_attn
    seen = []
    h = attn.k_proj.register_forward_hook(lambda m, a, out: seen.append(out.detach().float()))
    old = tower.config._attn_implementation
    tower.config._attn_implementation = "eager"
    try:
        out = tower(pixel_values, output_attentions=True)
    finally:
        tower.config._attn_implementation = old
        h.remove()
    probs = out.attentions[at].float()                                       # [n, H, T, T]
    # vision_feature_select_strategy="full": the CLS token is a visual token, ranked like a patch
    s = 0 if getattr(model.config, "vision_feature_select_strategy", None) == "full" else 1
    has_cls = hasattr(getattr(tower, "vision_model", tower).embeddings, "class_embedding")
    if not has_cls:     # SigLIP: every token a patch; "cls" is the attention received (head sum)
        s = 0
    if score == "cls" and not has_cls:
        dom = probs.sum(1).mean(1)
    elif score == "cls":
        dom = probs[:, :, 0, s:].sum(1)
    else:
        dom = probs[:, :, :, s:].mean(dim=(1, 2))
    k = seen[0]
    n, T, _ = k.shape
    keys = k.view(n, T, attn.num_heads, -1).mean(2)[:, s:]
    return dom.reshape(-1), keys.reshape(-1, keys.shape[-1])


def visionzip_split(k: int, contextual: float) -> tuple[int, int]:
    """``(dominant, contextual)`` counts of ``k`` kept: contextual = k * fraction rounded half up."""
    frac = Fraction(contextual).limit_denominator(10_000)
    c = min(k, math.floor(k * frac + Fraction(1, 2)))
    return k - c, c


def visionzip_select(dom: list[float], k: int, contextual: float) -> tuple[list[int], list[int]]:
    """``(dominant, targets)``: indices into the row's visual tokens."""
    d, c = visionzip_split(k, contextual)
    dominant = _top(dom, d)
    rest = [i for i in range(len(dom)) if i not in dominant]
    targets = []
    if c:
        step = max(1, len(rest) // c)
        targets = [rest[i] for i in range(0, len(rest), step)][:c]
    return sorted(dominant), targets


def visionzip_merge(x: torch.Tensor, keys: torch.Tensor, kept: list[int], targets: list[int]) -> torch.Tensor:
    """Removed tokens join their most key-similar target; a target with members becomes
    ``x_t + mean(members)``."""
    out = x.clone()
    members = {t: [] for t in targets}
    if targets:
        for i in range(x.shape[0]):
            if i in kept:
                continue
            best = max(targets, key=lambda t: (_cos(keys[i], keys[t]), -t))
            members[best].append(i)
    for t, ms in members.items():
        if ms:
            mean = sum(x[m].double() for m in ms) / len(ms)
            out[t] = (x[t].double() + mean).to(x.dtype)
    return out


# ---- CDPruner --------------------------------------------------------------------------------
def cdpruner_select(vis: torch.Tensor, instr: torch.Tensor, k: int, theta: float) -> list[int]:
    """CDPruner for one row (``vis [V, D]`` visual features, ``instr [T, D]`` instruction
    embeddings): each step adds the token that maximises ``det(L_S)`` of the conditional kernel
    ``L_ij = q_i cos(v_i, v_j) q_j`` (determinants computed directly, float64)."""
    V = vis.shape[0]
    r = [sum(_cos(vis[i], instr[t]) for t in range(instr.shape[0])) / max(instr.shape[0], 1)
         for i in range(V)]
    lo, hi = min(r), max(r)
    r = [(x - lo) / (hi - lo + 1e-6) for x in r]
    q = r if theta == 1 else [math.exp(theta / (2 * (1 - theta)) * x) for x in r]
    Lk = torch.tensor([[q[i] * (1.0 if i == j else _cos(vis[i], vis[j])) * q[j] for j in range(V)]
                       for i in range(V)],
                      dtype=torch.float64)
    picks: list[int] = []
    for _ in range(min(k, V)):
        best, best_det = None, None
        for j in range(V):
            if j in picks:
                continue
            S = picks + [j]
            det = float(torch.linalg.det(Lk[S][:, S]))
            if best is None or det > best_det:
                best, best_det = j, det
        picks.append(best)
    return picks


# ---- DSTP's coverage reserve -----------------------------------------------------------------
def cover_reserve(feats: torch.Tensor, active: list[int], candidates: list[int], r: int) -> list[int]:
    """Greedy farthest-point picks (cosine distance) from ``active``: indices into ``feats``."""
    f = torch.nn.functional.normalize(feats.double(), dim=-1)
    picks = []
    for _ in range(min(r, len(candidates))):
        ref = active + picks
        def near(j):
            return min((1.0 - float(f[j] @ f[a]) for a in ref), default=2.0)
        best = max((j for j in candidates if j not in picks), key=lambda j: (near(j), -j))
        picks.append(best)
    return picks


# ---- SparseVLM -------------------------------------------------------------------------------
def sparsevlm_layers(L: int) -> list[int]:
    """Scoring layers: 2, 6, 15 of 32 scaled to ``L`` (half up), at most ``L - 2``, distinct."""
    out = []
    for x in (2, 6, 15):
        y = min(math.floor(x * L / 32 + 0.5), L - 2)
        if y >= 0 and y not in out:
            out.append(y)
    return out


def sparsevlm_count(V: int, stage: int, budget=None, ratio=None) -> int:
    """Stage ``stage`` (0-based) keeps the paper's fraction (66/30/17 of 576 at budget 64,
    300/200/110 at 192; linear between, proportional outside; all from budget >= V)."""
    if budget is not None:
        t = float(budget) / float(max(V, 1))
    else:
        r = Fraction(ratio if ratio is not None else Fraction(1, 9)).limit_denominator(10_000)
        t = r.numerator / r.denominator
    lo_t, hi_t = 64 / 576.0, 192 / 576.0
    lo_p, hi_p = (66, 30, 17)[stage] / 576.0, (300, 200, 110)[stage] / 576.0
    if t >= 1.0:
        p = 1.0
    elif t <= lo_t:
        p = lo_p * (t / lo_t)
    elif t >= hi_t:
        p = hi_p * (t / hi_t)
    else:
        p = lo_p + (t - lo_t) / (hi_t - lo_t) * (hi_p - lo_p)
    return int(min(max(math.floor(float(V) * p + 0.5), 1), max(V, 1)))


def sparsevlm_raters(embeds: torch.Tensor, visual: list[int], cand: list[int]) -> list[int]:
    """Text candidates whose mean (over visual tokens) softmax-over-text relevance is above the
    mean; all candidates when none is."""
    if not visual:
        return list(cand)
    rel = {t: 0.0 for t in cand}
    for v in visual:
        dots = [float(embeds[v].double() @ embeds[t].double()) for t in cand]
        top = max(dots)
        ex = [math.exp(d - top) for d in dots]
        z = sum(ex)
        for t, e in zip(cand, ex):
            rel[t] += e / z / len(visual)
    mean = sum(rel.values()) / len(cand)
    out = [t for t in cand if rel[t] > mean]
    return out or list(cand)


def sparsevlm_recycle_count(n_pruned: int) -> tuple[int, int]:
    """v1: the top 30 % of the pruned tokens plus one are recycled into a tenth of them plus one
    clusters."""
    if n_pruned <= 0:
        return 0, 0
    n_rec = math.floor(n_pruned * 3 / 10) + 1
    return n_rec, math.floor(n_rec / 10) + 1


def sparsevlm_recycle_merge(hidden: torch.Tensor, recycled: list) -> torch.Tensor:
    """Every member joins its most cosine-similar representative (ties: the lower position);
    each representative becomes the mean of itself and its members."""
    out = hidden.clone()
    for b, (reps, members) in enumerate(recycled):
        groups = {r: [r] for r in reps}
        for m in members:
            best = max(reps, key=lambda r: (_cos(hidden[b, m], hidden[b, r]), -r))
            groups[best].append(m)
        for r, g in groups.items():
            out[b, r] = (sum(hidden[b, j].double() for j in g) / len(g)).to(hidden.dtype)
    return out


def divprune_select(feats: torch.Tensor, k: int) -> list[int]:
    """Greedy max-min cosine diversity, as a plain loop."""
    f = torch.nn.functional.normalize(feats.float(), dim=-1)
    d = 1 - f @ f.T
    d = (d + d.T) * 0.5              # a mutual nearest pair ties exactly: the lower index first
    V = d.shape[0]
    nn = [min((float(d[i, j]) for j in range(V) if j != i), default=0.0) for i in range(V)]
    picks = [max(range(V), key=lambda i: (nn[i], -i))]
    while len(picks) < k:
        best = max((j for j in range(V) if j not in picks),
                   key=lambda j: (min(float(d[j, p]) for p in picks), -j))
        picks.append(best)
    return picks
