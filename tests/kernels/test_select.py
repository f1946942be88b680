"""Selection and compaction ops (vtp_compile/kernels/select.py) against plain loops."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from vtp_compile.kernels import select

ops = torch.ops.vtp


@st.composite
def rows(draw):
    """[B, L] scores, a visual mask with a different count per row, padding on either side."""
    B, L = draw(st.integers(1, 4)), draw(st.integers(1, 30))
    g = torch.Generator().manual_seed(draw(st.integers(0, 10_000)))
    vis = torch.zeros(B, L, dtype=torch.bool)
    live = torch.ones(B, L, dtype=torch.bool)
    for b in range(B):
        pad = draw(st.integers(0, L - 1))
        left = draw(st.booleans())
        real = list(range(pad, L)) if left else list(range(0, L - pad))
        live[b] = False
        live[b, real] = True
        n_vis = draw(st.integers(0, len(real)))
        pick = torch.randperm(len(real), generator=g)[:n_vis]
        vis[b, [real[i] for i in pick.tolist()]] = True
    scores = torch.randn(B, L, generator=g)
    if draw(st.booleans()):
        scores = (scores * 2).round() / 2                     # many exact ties
    n_keep = torch.tensor([draw(st.integers(0, L + 2)) for _ in range(B)])
    return scores, vis, live, n_keep


@settings(max_examples=80, deadline=None)
@given(rows())
def test_select_keep_keeps_live_text_and_each_rows_topk_in_order(case):
    scores, vis, live, n_keep = case
    idx, slot_live = ops.select_keep(scores, vis, live, n_keep)
    B, L = vis.shape
    widths = []
    for b in range(B):
        real = [p for p in range(L) if live[b, p]]
        text = [p for p in real if not vis[b, p]]
        vis_pos = [p for p in real if vis[b, p]]
        best = sorted(vis_pos, key=lambda p: (-float(scores[b, p]), p))[:int(n_keep[b])]
        want = sorted(text + best)
        n = int(slot_live[b].sum())
        assert idx[b, :n].tolist() == want                       # kept positions, in order
        assert bool(slot_live[b, :n].all()) and not bool(slot_live[b, n:].any())   # then dead
        widths.append(n + (n < L))                               # a row that lost something
    assert idx.shape[1] == max(max(widths), 1)                   # ... keeps a dead slot
    assert idx.storage_offset() == 0 and idx.is_contiguous()     # Inductor needs aligned outputs


def test_select_keep_ranks_nan_and_infinite_scores_last():
    vis = torch.tensor([[False, True, True, True]])
    live = torch.ones_like(vis)
    scores = torch.tensor([[0.0, float("-inf"), float("nan"), 1.0]])
    idx, slot_live = select.select_keep(scores, vis, live, torch.tensor([2]))
    assert idx.tolist() == [[0, 1, 3, 0]] and slot_live.tolist() == [[True, True, True, False]]


def test_keep_all_without_padding_is_the_identity_layout():
    vis = torch.tensor([[False, True, True, False]] * 2)
    idx, slot_live = select.select_keep(torch.rand(2, 4), vis, torch.ones_like(vis), torch.tensor([5, 2]))
    assert idx.tolist() == [[0, 1, 2, 3]] * 2 and bool(slot_live.all())


@settings(max_examples=40, deadline=None)
@given(rows(), st.integers(1, 5))
def test_gather_then_scatter_round_trips_live_slots(case, D):
    scores, vis, live, n_keep = case
    idx, slot_live = select.select_keep(scores, vis, live, n_keep)
    x = torch.randn(*vis.shape, D)
    y = ops.gather_seq(x, idx, 1, 0)
    for b in range(x.shape[0]):
        assert torch.equal(y[b], x[b, idx[b]])
    back = ops.scatter_seq(torch.zeros_like(x), y * 2, idx, slot_live)
    kept = select.keep_mask(scores, vis, live, n_keep)
    assert torch.equal(back[kept], 2 * x[kept]) and not back[~kept].any()
    # a [1, L, L] mask gathered on both sequence dims (batch broadcast)
    m = torch.rand(1, vis.shape[1], vis.shape[1]) > 0.5
    mg = ops.gather_seq(ops.gather_seq(m, idx, 1, 0), idx, 2, 0)
    for b in range(x.shape[0]):
        assert torch.equal(mg[b], m[0][idx[b]][:, idx[b]])


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_live_mask_hides_dead_keys_except_from_themselves(dtype):
    slot_live = torch.tensor([[True, True, False], [True, True, True]])
    causal = torch.ones(3, 3, dtype=torch.bool).tril()[None, None]
    m = causal if dtype == torch.bool else torch.zeros(1, 1, 3, 3).masked_fill(~causal, float("-inf"))
    out = ops.live_mask(m, slot_live)
    allowed = out if dtype == torch.bool else out == 0
    assert allowed[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert torch.equal(allowed[1, 0], causal[0, 0])
    no_mask = ops.live_mask(None, slot_live)
    assert no_mask[0, 0].tolist() == [[True, True, False], [True, True, False], [True, True, True]]
