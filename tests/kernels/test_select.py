"""Selection and compaction ops (vtp_compile/kernels/select.py) against plain loops."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from vtp_compile.kernels import select
from ..helpers import record_case

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


@settings(max_examples=80)
@given(rows())
def test_select_keep_keeps_live_text_and_each_rows_topk_in_order(case):
    record_case("kernel/select")
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
    assert idx.shape[1] == max(max(widths), min(2, L))           # ... keeps a dead slot; >= 2
    assert idx.storage_offset() == 0 and idx.is_contiguous()     # Inductor needs aligned outputs


@st.composite
def one_row(draw):
    """One row of ``L`` positions, ``V`` of them visual, padding on either side, a keep count."""
    L = draw(st.integers(1, 30))
    pad = draw(st.integers(0, L - 1))
    V = draw(st.integers(0, L - pad))
    g = torch.Generator().manual_seed(draw(st.integers(0, 10_000)))
    real = list(range(pad, L)) if draw(st.booleans()) else list(range(0, L - pad))
    live = torch.zeros(1, L, dtype=torch.bool)
    live[0, real] = True
    vis = torch.zeros(1, L, dtype=torch.bool)
    vis[0, [real[i] for i in torch.randperm(len(real), generator=g)[:V].tolist()]] = True
    return torch.randn(1, L, generator=g), vis, live, draw(st.integers(0, L + 2))


@settings(max_examples=80)
@given(one_row())
def test_static_width_bounds_a_rows_width_and_pads_it_with_dead_slots(case):
    """For one row, the width from the static counts (length, visual count, keep count) is at
    least the data's, whatever the padding; padded to it, the layout is the data's plus dead
    slots (index 0)."""
    record_case("kernel/select")
    scores, vis, live, k = case
    L, V = vis.shape[1], int(vis.sum())
    width = select.static_width(L, V, k)
    n_keep = torch.tensor([k])
    idx, slot = ops.select_keep(scores, vis, live, n_keep)
    assert idx.shape[1] <= width <= L
    if bool(live.all()):                    # no padding: the bound is the width itself
        assert width == idx.shape[1]
    pidx, pslot = ops.select_keep(scores, vis, live, n_keep, width)
    W = idx.shape[1]
    assert pidx.shape == (1, width) and pslot.shape == (1, width)
    assert torch.equal(pidx[:, :W], idx) and torch.equal(pslot[:, :W], slot)
    assert not pidx[:, W:].any() and not pslot[:, W:].any()


def test_a_row_wider_than_the_static_width_is_an_error():
    """Fewer visual positions than the graph was compiled for keep more text: a clear error,
    never a truncated layout."""
    vis = torch.tensor([[False, True, True, False, False]])
    with pytest.raises(RuntimeError, match="more than the 3 the graph was compiled for"):
        select.select_keep(torch.rand(1, 5), vis, torch.ones_like(vis), torch.tensor([1]), 3)


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


@settings(max_examples=40)
@given(rows(), st.integers(1, 5))
def test_gather_then_scatter_round_trips_live_slots(case, D):
    record_case("kernel/select")
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


def _after_compaction(scores, vis, live, n_keep, x):
    """What methods put on the kept tokens: bmm/matmul with each operand layout, SDPA with an
    explicit mask and causal, reductions over the width, views that split and merge it."""
    import torch.nn.functional as F
    idx, slot = ops.select_keep(scores, vis, live, n_keep)
    y = ops.gather_seq(x, idx, 1, 0)                                  # [B, W, D]
    B, W, D = y.shape
    gram = y.transpose(1, 2) @ y                                      # bmm, permuted left operand
    sim = torch.bmm(y, y.transpose(1, 2))                             # [B, W, W]
    q = y.view(B, W, 2, D // 2).transpose(1, 2)                       # heads
    att = F.scaled_dot_product_attention(q, q, q, attn_mask=ops.live_mask(None, slot))
    causal = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    red = y.softmax(1).sum(1) + y.amax(1) + y.mean(1) + sim.logsumexp(-1).sum(-1, keepdim=True)
    flat = att.transpose(1, 2).reshape(B, W * D).view(B, W, D)
    return gram, red, (flat + causal.transpose(1, 2).reshape(B, W, D)) * slot[..., None]


@pytest.mark.inductor
def test_the_compacted_width_reaches_every_lowering_unguarded(monkeypatch):
    """The class behind issue 22: Inductor's lowerings ask 0/1 questions of sizes (the bmm layout
    choice asks whether a size is 1). The compacted width is unbacked; with the fake's lower
    bound at 1 the question has no answer and the compile fails, with ``min_width``'s 2 every
    lowering gets a static answer, and the compiled result equals eager."""
    g = torch.Generator().manual_seed(0)
    B, L, D = 2, 9, 8
    vis = torch.zeros(B, L, dtype=torch.bool)
    vis[:, 2:7] = True
    live = torch.ones(B, L, dtype=torch.bool)
    live[1, :2] = False
    args = (torch.randn(B, L, generator=g), vis, live, torch.tensor([1, 3]), torch.randn(B, L, D, generator=g))
    want = _after_compaction(*args)
    # no cached artifact: the compile with the bound at 1 must run its lowerings
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)

    def inductor(gm, example_inputs):      # as vtp lowers: the vtp ops decomposed, fused
        from torch._inductor.compile_fx import compile_fx
        from vtp_compile.kernels.lowering import decompositions
        return compile_fx(gm, example_inputs, decompositions=decompositions())
    torch._dynamo.reset()
    with monkeypatch.context() as m:
        m.setattr(select, "min_width", lambda L: 1)
        with pytest.raises(Exception, match="GuardOnDataDependentSymNode"):
            torch.compile(_after_compaction, backend=inductor, fullgraph=True)(*args)
    torch._dynamo.reset()
    got = torch.compile(_after_compaction, backend=inductor, fullgraph=True)(*args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
