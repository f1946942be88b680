"""The oracle's frame-aware selections (docs/video.md), written from the method definitions as
plain loops over one row's visual tokens; shares no code with the rewrite.

A row's visual tokens come as ``pos`` (their positions) with ``frame`` (each one's frame id, from
:func:`vtp_compile.testing.families.frame_ids`) and ``feats`` ``[V, D]`` (the features a site
reads). :func:`apportion` picks ``k`` of them one at a time: while some frame has fewer than
``least`` picks, the one with the fewest (then the larger weight, then the lower position of its
next token) takes its next best token; after that the frame with the largest ``weight / (picks +
1/2)`` does (Webster's rule; then the lower position).
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch

ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)
TAU = 0.01
RULES = ("vidcom2", "dycoke", "fastvid")


def select(rule: str, feats: torch.Tensor, frame: list[int], pos: list[int], k: int, p):
    """``(picks, merge plan or None)`` of video method ``rule`` with the knobs of Pruning ``p``."""
    if rule == "vidcom2":
        return vidcom2(feats, frame, pos, k, p.per_frame, p.min_per_frame), None
    if rule == "dycoke":
        return dycoke(feats, frame, pos, k, p.min_per_frame), None
    return fastvid(feats, frame, pos, k, p, p.min_per_frame)


def apportion(scores: list, frame: list[int], pos: list[int], k: int, least: int, weight: dict) -> list[int]:
    """Indices (into the row's candidates) of the ``k`` picks; ``scores`` higher first (ties: lower
    position), ``weight``: frame -> weight (ints are compared exactly)."""
    members: dict[int, list[int]] = {}
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], pos[i])):
        members.setdefault(frame[i], []).append(i)
    taken = {f: 0 for f in members}
    w = {f: (Fraction(weight[f]) if isinstance(weight[f], (int, Fraction)) else weight[f]) for f in members}
    out = []
    for _ in range(min(k, len(scores))):
        avail = [f for f in members if taken[f] < len(members[f])]
        low = [f for f in avail if taken[f] < least]
        if low:
            f = min(low, key=lambda f: (taken[f], -w[f], pos[members[f][taken[f]]]))
        else:
            f = min(avail, key=lambda f: (-(w[f] / (taken[f] + Fraction(1, 2))
                                            if isinstance(w[f], Fraction) else w[f] / (taken[f] + 0.5)),
                                          pos[members[f][taken[f]]]))
        out.append(members[f][taken[f]])
        taken[f] += 1
    return out


def sizes(frame: list[int]) -> dict:
    out: dict[int, int] = {}
    for f in frame:
        out[f] = out.get(f, 0) + 1
    return out


def _kernel(x: torch.Tensor, c: torch.Tensor) -> float:
    d2 = float(((x - c) ** 2).sum())
    return sum(math.exp(-d2 / (2 * a)) for a in ALPHAS)


def _vidcom2_tokens(feats: torch.Tensor):
    """Normalised tokens on the half of the channels with the lowest variance."""
    x = feats.double()
    var = ((x - x.mean(0)) ** 2).mean(0)
    chans = sorted(range(x.shape[1]), key=lambda c: (float(var[c]), c))[: x.shape[1] // 2]
    x = x[:, chans]
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def vidcom2(feats: torch.Tensor, frame: list[int], pos: list[int], k: int, alloc: str, least: int) -> list[int]:
    """VidCom2's picks (methods/vidcom2.py), ``alloc`` "unique", "even" or "off"."""
    if not frame:
        return []
    x = _vidcom2_tokens(feats)
    g = x.mean(0)
    by = {f: [i for i in range(len(frame)) if frame[i] == f] for f in sizes(frame)}
    centre = {f: x[ix].mean(0) for f, ix in by.items()}
    scores = [-(_kernel(x[i], g) + _kernel(x[i], centre[frame[i]])) for i in range(len(frame))]
    if alloc == "off":
        return sorted(range(len(scores)), key=lambda i: (-scores[i], pos[i]))[:k]
    n = sizes(frame)
    if alloc == "even":
        return apportion(scores, frame, pos, k, least, n)
    u = {f: -sum(_kernel(x[i], g) for i in ix) / len(ix) for f, ix in by.items()}
    top = max(u.values())
    e = {f: math.exp((v - top) / TAU) for f, v in u.items()}
    z = sum(e.values())
    s = {f: v / z for f, v in e.items()}
    mean = sum(s.values()) / len(s)
    factor = {f: Fraction(round((1 + s[f] - mean) * 256), 256) for f in n}
    return apportion(scores, frame, pos, k, least, {f: n[f] * factor[f] for f in n})


def dycoke(feats: torch.Tensor, frame: list[int], pos: list[int], k: int, least: int) -> list[int]:
    """DyCoke stage 1's picks (methods/dycoke.py): clips are runs of consecutive frames of one
    size; windows of four; w1, w2 compared with w0, w3 with w2, token by token in place order."""
    if not frame:
        return []
    by = {f: [i for i in range(len(frame)) if frame[i] == f] for f in sorted(sizes(frame))}
    order = list(by)
    ref_of, w = {}, 0
    for j, f in enumerate(order):
        w = 0 if j == 0 or len(by[f]) != len(by[order[j - 1]]) else (w + 1) % 4
        ref_of[f] = None if w == 0 else order[j - (2 if w == 2 else 1)]
    x = feats.double()
    x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    refs = [i for f in order if ref_of[f] is None for i in by[f]]
    rest = [i for f in order if ref_of[f] is not None for i in by[f]]
    n = sizes(frame)
    first = apportion([-pos[i] for i in refs], [frame[i] for i in refs], [pos[i] for i in refs],
                      k, least, {f: n[f] for f in n})
    out = [refs[i] for i in first]
    if len(out) < k and rest:
        nov = []
        for i in rest:
            f = frame[i]
            j = by[f].index(i)
            nov.append(1.0 - round(float(x[i] @ x[by[ref_of[f]][j]]) * 4096) / 4096)
        more = apportion(nov, [frame[i] for i in rest], [pos[i] for i in rest], k - len(out), least,
                         {f: n[f] for f in n})
        out += [rest[i] for i in more]
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm().clamp(min=1e-12) * b.norm().clamp(min=1e-12)))


def fastvid_segments(x: torch.Tensor, frame: list[int], tau: float, cuts: int) -> list[list[int]]:
    """DySeg: the row's frames in order, split after the frames whose similarity to the next is
    below ``tau`` or among the ``cuts`` lowest."""
    order = sorted(sizes(frame))
    g = {f: x[[i for i in range(len(frame)) if frame[i] == f]].mean(0) for f in order}
    sims = [(_cos(g[a], g[b]), j) for j, (a, b) in enumerate(zip(order, order[1:]))]
    lowest = {j for _, j in sorted(sims)[:cuts]}
    out, cur = [], []
    for j, f in enumerate(order):
        cur.append(f)
        if j < len(sims) and (sims[j][0] < tau or j in lowest):
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def _density(x: torch.Tensor, members: list[int]) -> dict:
    D = x.shape[1]
    d = {(i, j): float((x[i] - x[j]).norm()) / math.sqrt(D) for i in members for j in members}
    rho = {}
    for i in members:
        near = sorted(d[i, j] ** 2 for j in members)[:4]
        rho[i] = math.exp(-sum(near) / len(near))
    out = {}
    for i in members:
        higher = [d[i, j] for j in members if rho[j] > rho[i]]
        out[i] = rho[i] * (min(higher) if higher else max(d[i, j] for j in members))
    return out


def fastvid(feats: torch.Tensor, frame: list[int], pos: list[int], k: int, p, least: int):
    """FastVID's picks (methods/fastvid.py) and its merge plan ``(picks, {target: sources})``."""
    if not frame:
        return [], {}
    x = feats.double()
    V = len(frame)
    n = sizes(frame)
    centre = {f: x[[i for i in range(V) if frame[i] == f]].mean(0) for f in n}
    distinct = [1.0 - _cos(x[i], centre[frame[i]]) for i in range(V)]
    full = apportion(distinct, frame, pos, V, least, n)
    n_ctx = math.floor(k * p.context)
    salient = full[: k - n_ctx]
    segs = fastvid_segments(x, frame, p.tau, p.cuts)
    seg_of = {f: s for s, fs in enumerate(segs) for f in fs}
    weight, anchors = {}, set()
    for fs in segs:
        mine = [f for j, f in enumerate(fs) if (len(fs) - 1 - j) % p.anchor_every == 0]
        anchors.update(mine)
        for f in mine:
            weight[f] = Fraction(sum(n[g] for g in fs), len(mine))
    pool = [i for i in range(V) if frame[i] in anchors and i not in salient]
    score = {}
    for f in anchors:
        score.update(_density(x, [i for i in pool if frame[i] == f]))
    ctx = [pool[j] for j in apportion([score[i] for i in pool], [frame[i] for i in pool],
                                      [pos[i] for i in pool], n_ctx, 0, weight)]
    fill = [i for i in full[k - n_ctx:] if i not in ctx][: k - len(salient) - len(ctx)]
    picks = salient + ctx + fill
    plan: dict[int, list[int]] = {t: [] for t in ctx}
    for i in range(V):
        if i in picks:
            continue
        targets = [t for t in sorted(ctx, key=lambda t: pos[t]) if seg_of[frame[t]] == seg_of[frame[i]]]
        if targets:
            best = max(targets, key=lambda t: (_cos(x[i], x[t]), -pos[t]))
            plan[best].append(i)
    return picks, plan


def fastvid_merge(feats: torch.Tensor, plan: dict, beta: float) -> torch.Tensor:
    """The row's visual features with every context token merged with what it took."""
    out = feats.clone()
    for t, src in plan.items():
        w = max(1.0 / (len(src) + 2), beta)
        mean = (feats[t].double() + sum((feats[i].double() for i in src), torch.zeros_like(feats[t], dtype=torch.float64))) / (len(src) + 1)
        out[t] = (w * feats[t].double() + (1 - w) * mean).to(feats.dtype)
    return out


def runs(visual: torch.Tensor) -> torch.Tensor:
    """``[B, P]``: each visual position's run of consecutive visual positions, numbered per row."""
    out = torch.full(visual.shape, -1, dtype=torch.long)
    for b in range(visual.shape[0]):
        f = -1
        for p in range(visual.shape[1]):
            if visual[b, p]:
                f += int(p == 0 or not visual[b, p - 1])
                out[b, p] = f
    return out
