"""DCP-Prune ops (topk_mask, dist_consistency, cluster_select_scores, anchor_merge) against the
per-sample loop oracle in ``vtp_compile.testing.oracle_dcp``."""
import logging

import torch
from hypothesis import given, settings, strategies as st

import vtp_compile.kernels  # noqa: F401
from vtp_compile.testing import oracle_dcp
from ..helpers import record_case

ops = torch.ops.vtp


@st.composite
def clustered(draw):
    """[B, L, D] features from a few prototypes plus noise, a visual mask and scores."""
    B, D = draw(st.integers(1, 3)), draw(st.sampled_from([4, 8, 16]))
    L = draw(st.integers(2, 24))
    V = draw(st.integers(1, L))
    g = torch.Generator().manual_seed(draw(st.integers(0, 10_000)))
    protos = torch.randn(draw(st.integers(1, 4)), D, generator=g)
    x = protos[torch.randint(0, protos.shape[0], (B, L), generator=g)]
    # noise 0: exact duplicates, whose similarities tie in exact arithmetic and differ in the
    # last bits from one BLAS kernel to another; the ops compare them on a grid (kernels/dcp.py)
    x = x + draw(st.sampled_from([0.0, 0.01, 0.1, 1.0])) * torch.randn(B, L, D, generator=g)
    vis = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        vis[b, torch.randperm(L, generator=g)[:V]] = True
    scores = torch.rand(B, L, generator=g).softmax(-1)
    return x, vis, scores, V, draw(st.integers(1, V + 2))


def _rows(t, vis, b):
    return t[b][vis[b]]


@settings(max_examples=60)
@given(clustered())
def test_topk_mask_and_kappa(case):
    record_case("kernel/dcp")
    x, vis, scores, V, k = case
    mask = ops.topk_mask(scores, vis, torch.full((x.shape[0],), k))
    kappa = ops.dist_consistency(x, vis, mask, "test")
    for b in range(x.shape[0]):
        s = _rows(scores, vis, b).tolist()
        base = oracle_dcp._top(s, k)
        assert sorted(torch.nonzero(mask[b][vis[b]]).flatten().tolist()) == sorted(base)
        assert not (mask[b] & ~vis[b]).any()
        assert abs(float(kappa[b]) - oracle_dcp.kappa(_rows(x, vis, b), base)) < 1e-4


@settings(max_examples=60)
@given(clustered(), st.integers(0, 4))
def test_cluster_selection_equals_oracle(case, iters):
    record_case("kernel/dcp")
    x, vis, scores, V, k = case
    k = min(k, V)
    out = ops.cluster_select_scores(x, scores, vis, torch.full((x.shape[0],), k), iters)
    assert torch.isinf(out[~vis]).all()
    for b in range(x.shape[0]):
        s = _rows(scores, vis, b).tolist()
        got = oracle_dcp._top(_rows(out, vis, b).tolist(), k)
        assert sorted(got) == sorted(oracle_dcp.tatcs(_rows(x, vis, b), s, k, iters))


def test_cluster_selection_spreads_over_redundant_tokens():
    """Two identical top tokens: the base top-2 keeps both, TATCS keeps one of each kind."""
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    scores = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    vis = torch.ones(1, 4, dtype=torch.bool)
    two = torch.tensor([2])
    assert ops.topk_mask(scores, vis, two).tolist() == [[True, True, False, False]]
    picks = ops.cluster_select_scores(x, scores, vis, two, 3).topk(2).indices.sort().values
    assert picks.tolist() == [[0, 2]]


@settings(max_examples=60)
@given(clustered(), st.integers(1, 4))
def test_anchor_merge_equals_oracle(case, m):
    record_case("kernel/dcp")
    x, vis, scores, V, k = case
    keep = ops.topk_mask(scores, vis, torch.full((x.shape[0],), k)) | ~vis
    out = ops.anchor_merge(x, vis, keep, m)
    assert torch.equal(out[~vis], x[~vis])          # text untouched
    for b in range(x.shape[0]):
        kept = torch.nonzero(keep[b][vis[b]]).flatten().tolist()
        want = oracle_dcp.acgr_merge(_rows(x, vis, b), kept, m).float()
        torch.testing.assert_close(_rows(out, vis, b)[kept], want[kept], atol=1e-5, rtol=1e-5)


def test_kappa_is_logged_at_debug(caplog):
    x = torch.randn(2, 6, 4)
    vis = torch.ones(2, 6, dtype=torch.bool)
    with caplog.at_level(logging.DEBUG, logger="vtp_compile"):
        ops.dist_consistency(x, vis, ops.topk_mask(x[..., 0], vis, torch.tensor([2, 2])), "acgr@layer")
    assert any("acgr@layer: kappa per sample" in r.getMessage() for r in caplog.records)


@settings(max_examples=30)
@given(clustered(), st.integers(0, 3), st.data())
def test_rows_with_different_counts_cluster_like_each_row_alone(case, iters, data):
    """Per-row k: every row clusters exactly as it would in a batch of one."""
    record_case("kernel/dcp")
    x, vis, scores, V, _ = case
    k = torch.tensor([data.draw(st.integers(1, V)) for _ in range(x.shape[0])])
    out = ops.cluster_select_scores(x, scores, vis, k, iters)
    mask = ops.topk_mask(scores, vis, k)
    for b in range(x.shape[0]):
        alone = ops.cluster_select_scores(x[b:b + 1], scores[b:b + 1], vis[b:b + 1], k[b:b + 1], iters)
        torch.testing.assert_close(out[b:b + 1], alone)
        assert torch.equal(mask[b:b + 1], ops.topk_mask(scores[b:b + 1], vis[b:b + 1], k[b:b + 1]))


def test_anchor_merge_ties_go_to_the_lower_position():
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 1.0]]])
    vis = torch.ones(1, 4, dtype=torch.bool)
    keep = torch.tensor([[True, True, False, True]])
    out = ops.anchor_merge(x, vis, keep, 1)
    # the context (row 2) is equally similar to rows 0 and 1: it joins row 0 with weight 1
    assert out[0].tolist() == [[2.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 1.0]]


def test_repeated_tokens_rank_alike_under_last_bit_noise():
    """Repeated tokens (a uniform background) and equal scores: each backend rounds them a little
    differently (Inductor vs eager, one BLAS vs another). The picks must not change when every
    input moves by ~1e-7 relative (before the grid: 143 of 200 such cases changed)."""
    from vtp_compile.kernels.ties import round_scores
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(3, 16, generator=g)[torch.randint(0, 3, (1, 24), generator=g)]
        s = torch.rand(1, 24, generator=g).softmax(-1)[:, torch.randint(0, 6, (24,), generator=g)]
        vis, k = torch.ones(1, 24, dtype=torch.bool), torch.tensor([5])

        def jitter(t):
            return t * (1 + 1e-7 * torch.randn(t.shape, generator=g))

        def picks(x, s):
            s = round_scores(s)
            return ops.cluster_select_scores(x, s, vis, k, 2).topk(5).indices.sort().values

        assert torch.equal(picks(x, s), picks(jitter(x), jitter(s))), f"seed {seed}"
        keep = torch.tensor([[i % 3 == 0 for i in range(24)]])
        torch.testing.assert_close(ops.anchor_merge(x, vis, keep, 2),
                                   ops.anchor_merge(jitter(x), vis, keep, 2), atol=1e-5, rtol=1e-5)
