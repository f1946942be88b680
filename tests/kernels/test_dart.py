"""``dart_scores`` against the plain per-row loop (vtp_compile/testing/oracle_baselines.py)."""
import torch
from hypothesis import example, given, settings, strategies as st

from vtp_compile.kernels.dart import dart_scores
from vtp_compile.testing.oracle_baselines import dart_select
from ..helpers import record_case


@settings(max_examples=40)
@example(seed=0, B=3, L=17, pivots=1, dup=True)
@given(seed=st.integers(0, 1000), B=st.integers(1, 3), L=st.integers(4, 20), pivots=st.integers(1, 4),
       dup=st.booleans())
def test_equals_plain_loop(seed, B, L, pivots, dup):
    record_case("kernel/dart")
    g = torch.Generator().manual_seed(seed)
    vis = torch.rand(B, L, generator=g) < 0.6
    live = torch.rand(B, L, generator=g) < 0.9
    hidden = torch.randn(B, L, 6, generator=g)
    if dup:     # exact duplicates (DART's case): equal similarities, ties resolved by position.
        # Copies of a few random prototypes: equal features give bit-equal cosines in both
        # implementations; rounded features (tried first) also give cosines that are 0 in exact
        # arithmetic but +-1e-9 in floats, whose order is rounding noise, not a tie rule
        # Random prototypes still gave near-ties: two prototypes' self-similarities are 1 in
        # exact arithmetic and 1 +- 6e-8 in floats, differently in each implementation (seed 0,
        # B 3, L 17, pivots 1). Sign vectors of norm 2 make every cosine a multiple of 1/4,
        # exact in both, so only true ties remain (broken by position).
        protos = torch.zeros(3, 6)
        protos[:, :4] = (torch.randint(0, 2, (3, 4), generator=g) * 2 - 1).float()
        hidden = protos[torch.randint(0, 3, (B, L), generator=g)]
    keys = torch.randn(B, 2, L, 3, generator=g)
    n_keep = torch.randint(0, L + 2, (B,), generator=g)
    got = dart_scores(keys, hidden, vis, live, n_keep, pivots)
    for b in range(B):
        visual = [i for i in range(L) if vis[b, i] and live[b, i]]
        chosen = [i for i in range(L) if got[b, i] > 0]
        if not visual:
            assert chosen == []
            continue
        norms = keys[b].abs().sum(dim=(0, 2)).tolist()
        text = [i for i in range(L) if live[b, i] and not vis[b, i]]
        after = [i for i in text if i > max(visual)]
        want = dart_select(norms, hidden[b], visual, after, text, int(n_keep[b]), pivots)
        assert chosen == want


def test_budget_is_exact_and_pivots_are_kept():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 30, 8, generator=g)
    keys = torch.randn(1, 2, 30, 4, generator=g)
    vis = torch.zeros(1, 30, dtype=torch.bool)
    vis[0, 2:26] = True
    live = torch.ones_like(vis)
    out = dart_scores(keys, hidden, vis, live, torch.tensor([11]), 4)
    assert int((out > 0).sum()) == 11
    top4 = keys[0].abs().sum(dim=(0, 2))[2:26].topk(4).indices + 2
    assert all(out[0, int(p)] > 0 for p in top4)
