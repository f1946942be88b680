"""Each baseline decomposition (what Inductor compiles, vtp_compile/kernels/lowering.py) equals
its op's reference (the CPU kernel) on random inputs with awkward shapes: one row, one token,
V not a power of two, budgets at and past V, rows without visual tokens, padded rows."""
import pytest
import torch

from vtp_compile.kernels import lowering, sparsevlm, visionzip

# (B, L): one row / one token, odd widths
SHAPES = [(1, 1), (1, 6), (2, 7), (3, 13), (2, 33)]


def _rows(g, B, L):
    """``(vis, live, n_keep)``: padding on the left of some rows, one row without visual tokens
    (when B > 1), budgets from 0 to past L."""
    live = torch.ones(B, L, dtype=torch.bool)
    if L > 2:
        live[-1, :2] = False
    vis = (torch.rand(B, L, generator=g) < 0.6) & live
    if L > 1:
        vis[0, 0] = False
        vis[0, -1] = True
    if B > 1:
        vis[1] = False
    n_keep = torch.randint(0, L + 3, (B,), generator=g)
    return vis, live, n_keep


def _case(name, B, L, g):
    D, H, HKV, HD = L + 3, 4, 2, 5        # D > V: CDPruner's kernel keeps full rank
    x = torch.randn(B, L, D, generator=g)
    vis, live, n = _rows(g, B, L)
    s = torch.rand(B, L, generator=g)
    if name == "sparsevlm_keep":
        return [(n, stage, budget, 2, 9) for stage in (0, 2) for budget in (0, 1, L + 4)]
    if name == "sparsevlm_scores":
        q = torch.randn(B, H, L, HD, generator=g)
        k = torch.randn(B, HKV, L, HD, generator=g)
        causal = torch.ones(L, L, dtype=torch.bool).tril()[None] & live[:, None, :]
        add = torch.zeros(B, L, L).masked_fill(~causal, float("-inf"))
        return [(q, k, m, 0.3, x, vis, live) for m in (None, causal, add)]
    if name == "sparsevlm_recycle_rank":
        return [(s, vis, live, n)]
    if name == "sparsevlm_recycle_merge":
        sc = sparsevlm.recycle_rank(s, vis, live, n)
        return [(x, vis, ~vis | (sc >= 3.0), sc), (x.half(), vis, ~vis | (sc >= 3.0), sc)]
    if name == "dart_scores":
        keys = torch.randn(B, HKV, L, HD, generator=g)
        return [(keys, x, vis, live, n, p) for p in (1, 2)]
    if name == "visionzip_scores":
        s[:, ::3] = 0.5                      # ties: lower position first
        return [(s, vis, n, num, den) for num, den in ((5, 32), (1, 2))]
    if name == "visionzip_merge":
        sc = visionzip.visionzip_scores(s, vis, n, 1, 2)
        keys = torch.randn(B, L, HD, generator=g)
        return [(x, vis, ~vis | (sc > 0), sc, keys), (x.half(), vis, ~vis | (sc > 0), sc, keys)]
    if name == "cdpruner_scores":
        return [(x, vis, live, n, theta) for theta in (0.0, 0.5, 1.0)]
    raise AssertionError(name)


BASELINES = ["sparsevlm_keep", "sparsevlm_scores", "sparsevlm_recycle_rank",
             "sparsevlm_recycle_merge", "dart_scores", "visionzip_scores", "visionzip_merge",
             "cdpruner_scores"]


def test_every_baseline_is_decomposed():
    assert set(BASELINES) <= set(lowering.DECOMPOSED)


@pytest.mark.parametrize("name", BASELINES)
def test_decomposition_equals_the_reference(name):
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    decomp = lowering.DECOMPOSED[name]
    op = getattr(torch.ops.vtp, name)
    for B, L in SHAPES:
        for args in _case(name, B, L, g):
            want = op(*args)            # the CPU kernel: the reference
            got = decomp(*args)
            assert got.dtype == want.dtype and got.shape == want.shape, (name, B, L)
            if want.dtype.is_floating_point and name.endswith(("merge", "sparsevlm_scores")):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            else:
                torch.testing.assert_close(got, want, atol=0, rtol=0, msg=f"{name} B={B} L={L}")
