"""``reserve_cover`` against the plain greedy loop (vtp_compile/testing/oracle_baselines.py)."""
import torch
from hypothesis import given, settings, strategies as st

from vtp_compile.kernels.coverage import reserve_cover
from vtp_compile.testing.oracle_baselines import cover_reserve
from ..helpers import record_case


@settings(max_examples=40)
@given(seed=st.integers(0, 1000), B=st.integers(1, 3), L=st.integers(2, 16), dup=st.booleans())
def test_equals_plain_loop(seed, B, L, dup):
    record_case("kernel/coverage")
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, 5, generator=g)
    if dup:
        hidden = hidden.round()
    cand = torch.rand(B, L, generator=g) < 0.7
    active = cand & (torch.rand(B, L, generator=g) < 0.3)
    n_res = torch.randint(0, L, (B,), generator=g)
    out = reserve_cover(hidden, cand, active, n_res)
    for b in range(B):
        act = [i for i in range(L) if active[b, i]]
        pool = [i for i in range(L) if cand[b, i] and not active[b, i]]
        want = cover_reserve(hidden[b], act, pool, int(n_res[b]))
        picks = sorted((i for i in range(L) if -1 < out[b, i] < 3), key=lambda i: -float(out[b, i]))
        assert [i for i in range(L) if out[b, i] == 3] == act
        assert len(picks) == len(want)
        # each pick is a farthest point from what is kept so far (exactly equal distances, as
        # between rounded vectors, may resolve either way in floating point)
        f = torch.nn.functional.normalize(hidden[b].double(), dim=-1)
        for t, p in enumerate(picks):
            ref = act + picks[:t]
            near = {j: min((1.0 - float(f[j] @ f[a]) for a in ref), default=2.0)
                    for j in pool if j not in picks[:t]}
            assert near[p] >= max(near.values()) - 1e-9, (t, p, near)
        if not dup:
            assert picks == want
