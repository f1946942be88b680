"""Nüwa's ops against the oracle's plain loops (vtp_compile.testing.oracle_nuwa)."""
import math

import torch
from hypothesis import given, settings, strategies as st

from vtp_compile.kernels import nuwa as reference
from vtp_compile.testing import oracle_nuwa
from ..helpers import record_case

SETTINGS = dict(max_examples=30)


@st.composite
def grids(draw):
    grid = draw(st.integers(1, 7))
    images = draw(st.integers(1, 2))
    V = images * grid * grid
    k = draw(st.integers(1, V))
    seed = draw(st.integers(0, 10_000))
    ties = draw(st.booleans())
    return grid, images, V, k, seed, ties, draw(st.integers(1, 3))


def _cls(B, V, seed, ties):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(B, V, generator=g)
    return (s * 4).round() / 4 if ties else s       # coarse values: many exact ties


@settings(**SETTINGS)
@given(grids())
def test_anchor_scores_pick_the_oracles_anchors(case):
    record_case("kernel/nuwa")
    grid, images, V, k, seed, ties, region = case
    cls = _cls(2, V, seed, ties)
    scores = reference.nuwa_anchor_scores(cls, torch.tensor([k, k]), grid, grid, region)
    for b in range(2):
        got = sorted(sorted(range(V), key=lambda i: (-float(scores[b, i]), i))[:k])
        assert got == oracle_nuwa.anchors(cls[b].tolist(), k, grid, region)


def test_every_block_gets_an_anchor_when_the_budget_allows():
    """Separation: a 4x4 grid has four 2x2 blocks; 4 anchors means one per block, even when
    one block holds all the highest scores."""
    cls = torch.zeros(1, 16)
    cls[0, [0, 1, 4, 5]] = torch.tensor([0.9, 0.8, 0.7, 0.6])     # top-left block
    cls[0, [2, 8, 10]] = 0.1
    scores = reference.nuwa_anchor_scores(cls, torch.tensor([4]), 4, 4, 2)
    top = sorted(scores[0].topk(4).indices.tolist())
    assert top == [0, 2, 8, 10]


@settings(**SETTINGS)
@given(grids(), st.sampled_from([0.1, 0.265, 1.0]), st.sampled_from([0.0, 0.45, 1.0]))
def test_aggregate_equals_the_oracle(case, distance, pillars):
    record_case("kernel/nuwa")
    grid, images, V, k, seed, ties, region = case
    B, D, Dv, pre = 2, 5, 3, 2
    g = torch.Generator().manual_seed(seed + 1)
    hidden = torch.randn(B, pre + V + 1, D, generator=g)
    vm = torch.zeros(B, pre + V + 1, dtype=torch.bool)
    vm[:, pre:pre + V] = True
    upper = torch.randn(B, V, Dv, generator=g)
    cls = _cls(B, V, seed, ties)
    vscores = reference.nuwa_anchor_scores(cls, torch.tensor([k] * B), grid, grid, region)
    scores = torch.zeros(B, pre + V + 1)
    scores[vm] = vscores.flatten()
    keep = torch.zeros_like(vm)
    for b in range(B):
        top = sorted(range(V), key=lambda i: (-float(vscores[b, i]), i))[:k]
        keep[b, [pre + i for i in top]] = True
    got = reference.nuwa_aggregate(hidden, vm, keep, scores, upper, grid, grid, distance, pillars)
    for b in range(B):
        row = cls[b].tolist()
        chosen = oracle_nuwa.anchors(row, k, grid, region)
        want = hidden[b, pre:pre + V]
        if len(chosen) < V:
            want = oracle_nuwa.aggregate(want, upper[b], chosen, grid, distance, pillars,
                                         oracle_nuwa.anchor_order(row, k, grid, region))
        torch.testing.assert_close(got[b, pre:pre + V], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[b, :pre], hidden[b, :pre])           # text untouched
    n_pillar = math.ceil(pillars * k)
    if n_pillar >= k or k == V:
        torch.testing.assert_close(got, hidden)                              # nothing to collect
