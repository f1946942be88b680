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
