"""dpp_greedy / cdpruner_scores (vtp_compile/kernels/cdpruner.py) against greedy MAP by direct
determinants (the oracle's loop)."""
import math

import torch
from hypothesis import given, settings, strategies as st
from torch.library import opcheck

from vtp_compile.kernels import cdpruner
from vtp_compile.testing import oracle_baselines
from ..helpers import record_case


def _det_greedy(L: torch.Tensor, k: int) -> list[int]:
    picks = []
    for _ in range(k):
        gains = [(float(torch.linalg.det(L[picks + [j]][:, picks + [j]].double())), -j)
                 for j in range(L.shape[0]) if j not in picks]
        picks.append(-max(gains)[1])
    return picks


@settings(max_examples=25)
@given(B=st.integers(1, 3), V=st.integers(1, 10), data=st.data())
def test_greedy_picks_in_the_order_of_determinant_gains(B, V, data):
    record_case("kernel/cdpruner")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    x = torch.randn(B, V, 12, generator=g)
    kernel = x @ x.transpose(1, 2) + 0.1 * torch.eye(V)         # full rank: gains stay positive
    valid = torch.rand(B, V, generator=g) > data.draw(st.sampled_from([0.0, 0.3]))
    k = torch.tensor([min(data.draw(st.integers(0, V)), int(valid[b].sum())) for b in range(B)])
    out = torch.ops.vtp.dpp_greedy(kernel, valid, k)
    for b in range(B):
        idx = torch.nonzero(valid[b]).flatten().tolist()
        want = [idx[i] for i in _det_greedy(kernel[b][idx][:, idx], int(k[b]))]
        got = sorted((p for p in range(V) if out[b, p] > 0), key=lambda p: -float(out[b, p]))
        assert got == want                                     # same picks, same order
        assert (out[b][~valid[b]] == -1).all()


def test_rank_deficient_kernel_still_picks_k_distinct_tokens():
    f = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    out = cdpruner.dpp_greedy(f @ f.transpose(1, 2), torch.ones(1, 4, dtype=torch.bool), torch.tensor([4]))
    assert sorted(out[0].tolist()) == [1.0, 2.0, 3.0, 4.0] and not out.isnan().any()
    picked2 = cdpruner.dpp_greedy(f @ f.transpose(1, 2), torch.ones(1, 4, dtype=torch.bool), torch.tensor([2]))
    assert set((picked2[0] > 0).nonzero().flatten().tolist()) == {0, 2}   # never both duplicates first


@settings(max_examples=10)
@given(theta=st.sampled_from([0.0, 0.5, 0.8]), data=st.data())
def test_scores_pick_what_the_oracle_picks(theta, data):
    record_case("kernel/cdpruner")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    B, L, D = 2, 14, 16
    hidden = torch.randn(B, L, D, generator=g)
    vis = torch.zeros(B, L, dtype=torch.bool)
    vis[0, 2:9] = True
    vis[1, 4:12] = True
    live = torch.ones(B, L, dtype=torch.bool)
    live[1, :2] = False                                       # left padding
    k = torch.tensor([data.draw(st.integers(0, 7)), data.draw(st.integers(0, 8))])
    s = torch.ops.vtp.cdpruner_scores(hidden, vis, live, k, theta)
    for b in range(B):
        pos = torch.nonzero(vis[b]).flatten().tolist()
        text = [i for i in range(L) if live[b, i] and not vis[b, i]]
        after = [i for i in text if i > pos[0]]
        want = oracle_baselines.cdpruner_select(hidden[b, pos], hidden[b, after], int(k[b]), theta)
        assert sorted(p for p in range(L) if s[b, p] > 0) == sorted(pos[i] for i in want)


def test_relevance_weight_trades_diversity_for_relevance():
    """theta 0: the instruction plays no part; theta near 1: the most relevant token first."""
    torch.manual_seed(0)
    D = 8
    text = torch.randn(1, 1, D)
    vis = torch.randn(1, 6, D)
    vis[0, 3] = text[0, 0] * 2.0 + 0.01 * torch.randn(D)    # token 3 matches the instruction
    hidden = torch.cat([vis, text], 1)
    mask = torch.tensor([[True] * 6 + [False]])
    live = torch.ones(1, 7, dtype=torch.bool)
    first = lambda th: int(torch.ops.vtp.cdpruner_scores(hidden, mask, live, torch.tensor([1]), th).argmax())  # noqa: E731
    assert first(0.99) == 3
    base = cdpruner.cdpruner_scores(torch.cat([vis, -text], 1), mask, live, torch.tensor([3]), 0.0)
    assert torch.equal(base, cdpruner.cdpruner_scores(hidden, mask, live, torch.tensor([3]), 0.0))
    assert math.isclose(float(cdpruner.relevance_weights(vis, mask[:, :6], hidden, ~mask, 0.5).max()),
                        math.exp(0.5), rel_tol=1e-5)


def test_fake_and_schema():
    hidden = torch.randn(2, 9, 8)
    vis = torch.zeros(2, 9, dtype=torch.bool)
    vis[:, 2:6] = True
    opcheck(torch.ops.vtp.cdpruner_scores.default,
            (hidden, vis, torch.ones_like(vis), torch.tensor([2, 3]), 0.5))
    kern = torch.randn(2, 4, 6)
    kern = kern @ kern.transpose(1, 2)
    opcheck(torch.ops.vtp.dpp_greedy.default, (kern, torch.ones(2, 4, dtype=torch.bool), torch.tensor([2, 4])))
