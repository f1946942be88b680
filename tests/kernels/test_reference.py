import pytest
import torch
from hypothesis import given, settings, strategies as st

from vtp_compile.kernels import reference as ref

import vtp_compile.kernels  # noqa: F401


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(2, 30), data=st.data())
def test_select_keep_keeps_all_text_and_topk_visual_in_order(B, L, data):
    V = data.draw(st.integers(1, L))
    k = data.draw(st.integers(1, V + 3))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    vis = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        vis[b, torch.randperm(L, generator=g)[:V]] = True
    scores = torch.randn(B, L, generator=g)
    idx = torch.ops.vtp.select_keep(scores, vis, V, k)
    kk = min(k, V)
    assert idx.shape == (B, L - V + kk)
    for b in range(B):
        row = idx[b].tolist()
        assert row == sorted(row)
        text = [p for p in range(L) if not vis[b, p]]
        assert set(text) <= set(row)
        chosen = [p for p in row if vis[b, p]]
        vis_pos = [p for p in range(L) if vis[b, p]]
        best = sorted(vis_pos, key=lambda p: (-float(scores[b, p]), p))[:kk]
        assert sorted(best) == chosen


def test_select_keep_rejects_uneven_visual_counts():
    vis = torch.tensor([[True, True, False], [True, False, False]])
    with pytest.raises(ValueError, match="same number of visual tokens"):
        ref.select_keep(torch.zeros(2, 3), vis, 2, 1)


def test_select_keep_with_infinite_scores():
    vis = torch.tensor([[False, True, True, True]])
    scores = torch.tensor([[0.0, float("-inf"), float("nan"), 1.0]])
    assert ref.select_keep(scores, vis, 3, 2).tolist() == [[0, 1, 3]]


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), H=st.sampled_from([1, 2, 4]), rep=st.sampled_from([1, 2]),
       S=st.integers(1, 20), D=st.sampled_from([4, 8]), masked=st.booleans())
def test_attn_row_scores_matches_sdpa_weights(B, H, rep, S, D, masked):
    q = torch.randn(B, H * rep, S, D)
    k = torch.randn(B, H, S, D)
    mask = (torch.rand(B, S) > 0.3) if masked else None
    if mask is not None:
        mask[:, -1] = True
    got = torch.ops.vtp.attn_row_scores(q, k, mask, D ** -0.5, -1)
    kk = k.repeat_interleave(rep, 1)
    w = (q[:, :, -1:] @ kk.transpose(-1, -2))[:, :, 0] * D ** -0.5
    if mask is not None:
        w = w.masked_fill(~mask[:, None], float("-inf"))
    torch.testing.assert_close(got, w.softmax(-1).mean(1))


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 12), data=st.data())
def test_gather_then_scatter_round_trips(B, L, data):
    Lp = data.draw(st.integers(1, L))
    idx = torch.stack([torch.randperm(L)[:Lp].sort().values for _ in range(B)])
    x = torch.randn(B, L, 5)
    y = torch.ops.vtp.gather_seq(x, idx, 1, 0)
    assert torch.equal(y[1 if B > 1 else 0], x[1 if B > 1 else 0, idx[1 if B > 1 else 0]])
    assert torch.equal(torch.ops.vtp.scatter_seq(x, y, idx), x)
    # broadcast batch: a [1, L, L] mask gathered on both sequence dims
    m = torch.rand(1, L, L) > 0.5
    mg = torch.ops.vtp.gather_seq(torch.ops.vtp.gather_seq(m, idx, 1, 0), idx, 2, 0)
    assert mg.shape == (B, Lp, Lp)
    for b in range(B):
        assert torch.equal(mg[b], m[0][idx[b]][:, idx[b]])


def test_divprune_picks_are_diverse_and_counted():
    f = torch.tensor([[[1.0, 0], [0.99, 0.01], [0, 1.0], [-1.0, 0]]])
    s = ref.divprune_scores(f, 3)
    picked = (s > 0).nonzero()[:, 1].tolist()
    assert len(picked) == 3 and not {0, 1} <= set(picked)  # never both near-duplicates


def test_check_left_padded():
    m4 = torch.ones(2, 1, 1, 3, dtype=torch.bool)
    ok = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert torch.equal(ref.check_left_padded(ok, m4), m4)
    bad = torch.tensor([[1, 1, 1, 0, 1], [1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="left padding"):
        ref.check_left_padded(bad, m4)
    assert torch.equal(ref.check_left_padded(bad[:, :3], m4), m4)  # nothing evicted: no check
