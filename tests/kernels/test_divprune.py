"""divprune_scores (vtp_compile/kernels/divprune.py) against the oracle's greedy loop."""
import torch
from hypothesis import given, settings, strategies as st

from vtp_compile.kernels import divprune
from vtp_compile.testing.oracle import _divprune


def test_picks_are_diverse_and_counted():
    f = torch.tensor([[[1.0, 0], [0.99, 0.01], [0, 1.0], [-1.0, 0]]])
    s = divprune.divprune_scores(f, torch.ones(1, 4, dtype=torch.bool), torch.tensor([3]))
    picked = (s > 0).nonzero()[:, 1].tolist()
    assert len(picked) == 3 and not {0, 1} <= set(picked)  # never both near-duplicates


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 16), D=st.sampled_from([2, 4]), data=st.data())
def test_each_row_picks_what_the_oracle_picks(B, L, D, data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    x = torch.randn(B, L, D, generator=g)
    vis = torch.rand(B, L, generator=g) > data.draw(st.sampled_from([0.0, 0.3, 0.7]))
    k = torch.tensor([data.draw(st.integers(0, L + 1)) for _ in range(B)])
    s = torch.ops.vtp.divprune_scores(x, vis, k)
    for b in range(B):
        pos = torch.nonzero(vis[b]).flatten().tolist()
        kb = min(int(k[b]), len(pos))
        picked = sorted(p for p in range(L) if s[b, p] > 0)
        want = [pos[i] for i in _divprune(x[b, pos][None], kb)[0]] if kb else []
        assert picked == sorted(want)
