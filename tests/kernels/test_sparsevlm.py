"""SparseVLM's ops against the plain loops of vtp_compile/testing/oracle_baselines.py."""
import math

import torch
from hypothesis import given, settings, strategies as st

from vtp_compile.kernels.sparsevlm import raters, sparsevlm_keep, sparsevlm_scores
from vtp_compile.testing import oracle_baselines as ob
from ..helpers import record_case


def test_schedule_matches_the_paper_and_the_oracle_arithmetic():
    assert [int(sparsevlm_keep(torch.tensor([576]), s, 64, 0, 1)) for s in range(3)] == [66, 30, 17]
    assert [int(sparsevlm_keep(torch.tensor([576]), s, 192, 0, 1)) for s in range(3)] == [300, 200, 110]
    for V in (1, 5, 16, 144, 576, 2880):
        n = torch.tensor([V])
        for b in (1, 3, 8, 16, 33, 64, 100, 128, 192, 300, 576, 999):
            assert [int(sparsevlm_keep(n, s, b, 0, 1)) for s in range(3)] == \
                [ob.sparsevlm_count(V, s, budget=b) for s in range(3)]
        for num, den in ((1, 9), (1, 4), (1, 2), (1, 1), (3, 100)):
            assert [int(sparsevlm_keep(n, s, 0, num, den)) for s in range(3)] == \
                [ob.sparsevlm_count(V, s, ratio=num / den) for s in range(3)]


@settings(max_examples=25)
@given(seed=st.integers(0, 500), B=st.integers(1, 3), L=st.integers(3, 12), Hkv=st.sampled_from([1, 2]),
       rep=st.sampled_from([1, 2]))
def test_rater_scores_equal_the_plain_loop(seed, B, L, Hkv, rep):
    record_case("kernel/sparsevlm")
    g = torch.Generator().manual_seed(seed)
    H, D = Hkv * rep, 4
    q = torch.randn(B, H, L, D, generator=g)
    k = torch.randn(B, Hkv, L, D, generator=g)
    emb = torch.randn(B, L, 6, generator=g)
    vis = torch.rand(B, L, generator=g) < 0.5
    live = torch.rand(B, L, generator=g) < 0.85
    mask = torch.ones(L, L, dtype=torch.bool).tril()[None] & live[:, None, :]
    got = sparsevlm_scores(q, k, mask, 0.5, emb, vis, live)
    got_r = raters(emb, vis, live)
    for b in range(B):
        visual = [i for i in range(L) if vis[b, i] and live[b, i]]
        text = [i for i in range(L) if live[b, i] and not vis[b, i]]
        if not text:
            continue
        after = [i for i in text if not visual or i > max(visual)]
        want_r = ob.sparsevlm_raters(emb[b], visual, after or text)
        assert [i for i in range(L) if got_r[b, i]] == want_r
        for s in range(L):
            tot = 0.0
            for r in want_r:
                logit = [(float(q[b, h, r] @ k[b, h // rep, j]) * 0.5 if mask[b, r, j] else -math.inf)
                         for h in range(H) for j in range(L)]
                for h in range(H):
                    row = logit[h * L:(h + 1) * L]
                    top = max(row)
                    z = sum(math.exp(x - top) for x in row)
                    tot += math.exp(row[s] - top) / z / H / len(want_r)
            assert abs(float(got[b, s]) - tot) < 1e-5


@settings(max_examples=25)
@given(seed=st.integers(0, 500), B=st.integers(1, 3), L=st.integers(2, 40), dup=st.booleans())
def test_recycling_equals_the_plain_loop(seed, B, L, dup):
    record_case("kernel/sparsevlm")
    from vtp_compile.kernels.sparsevlm import recycle_merge, recycle_rank
    g = torch.Generator().manual_seed(seed)
    score = torch.rand(B, L, generator=g)
    hidden = torch.randn(B, L, 5, generator=g)
    if dup:
        hidden = hidden.round()
    vis = torch.rand(B, L, generator=g) < 0.7
    live = torch.rand(B, L, generator=g) < 0.9
    k = torch.randint(0, L + 1, (B,), generator=g)
    ranked = recycle_rank(score, vis, live, k)
    rec = []
    for b in range(B):
        pos = [i for i in range(L) if vis[b, i] and live[b, i]]
        order = sorted(range(len(pos)), key=lambda i: (-float(score[b, pos[i]]), i))
        kb = min(int(k[b]), len(pos))
        n_rec, n_clu = ob.sparsevlm_recycle_count(len(pos) - kb)
        top = sorted(ranked[b].tolist(), reverse=True)
        want_keep = sorted(pos[i] for i in order[:kb + n_clu])
        got_keep = sorted(torch.topk(ranked[b], kb + n_clu).indices.tolist()) if kb + n_clu else []
        assert got_keep == want_keep, (top, want_keep)
        rec.append(([pos[i] for i in order[kb:kb + n_clu]], [pos[i] for i in order[kb + n_clu:kb + n_rec]]))
    keep = torch.zeros(B, L, dtype=torch.bool)
    for b, (reps, _) in enumerate(rec):
        pos = [i for i in range(L) if vis[b, i] and live[b, i]]
        order = sorted(range(len(pos)), key=lambda i: (-float(score[b, pos[i]]), i))
        keep[b, [pos[i] for i in order[:min(int(k[b]), len(pos))]] + reps] = True
    got = recycle_merge(hidden, vis & live, keep, ranked)
    want = ob.sparsevlm_recycle_merge(hidden, rec)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
