"""visionzip_scores / visionzip_merge (vtp_compile/kernels/visionzip.py) against the oracle's
plain loops."""
from fractions import Fraction

import torch
from hypothesis import given, settings, strategies as st
from torch.library import opcheck

from vtp_compile.kernels import visionzip
from vtp_compile.testing import oracle_baselines
from ..helpers import record_case


def test_paper_splits():
    k = torch.tensor([64, 128, 192, 1, 0])
    assert visionzip.contextual_count(k, 5, 32).tolist() == [10, 20, 30, 0, 0]
    assert [oracle_baselines.visionzip_split(n, 0.15625) for n in (64, 128, 192)] == \
        [(54, 10), (108, 20), (162, 30)]


def _case(data, B=2, L=20, hd=6):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    vis = torch.rand(B, L, generator=g) > data.draw(st.sampled_from([0.0, 0.3, 0.6]))
    dom = torch.rand(B, L, generator=g)
    keys = torch.randn(B, L, hd, generator=g)
    hidden = torch.randn(B, L, 5, generator=g)
    k = torch.tensor([data.draw(st.integers(0, L + 2)) for _ in range(B)])
    frac = data.draw(st.sampled_from([0.0, 0.15625, 0.3, 0.9]))
    return vis, dom, keys, hidden, k, frac


@settings(max_examples=30)
@given(data=st.data())
def test_selection_and_merge_equal_the_oracle(data):
    record_case("kernel/visionzip")
    vis, dom, keys, hidden, k, frac = _case(data)
    r = Fraction(frac).limit_denominator(10_000)
    num, den = r.numerator, r.denominator
    s = torch.ops.vtp.visionzip_scores(dom, vis, k, num, den)
    keep = s > 0
    merged = torch.ops.vtp.visionzip_merge(hidden, vis, keep, s, keys)
    for b in range(vis.shape[0]):
        pos = torch.nonzero(vis[b]).flatten().tolist()
        kb = min(int(k[b]), len(pos))
        dominant, targets = oracle_baselines.visionzip_select([float(dom[b, p]) for p in pos], kb, frac)
        assert [p for p in pos if s[b, p] == 2] == [pos[i] for i in dominant]
        assert [p for p in pos if s[b, p] == 1] == sorted(pos[i] for i in targets)
        assert not keep[b][~vis[b]].any()
        want = oracle_baselines.visionzip_merge(hidden[b, pos], keys[b, pos], dominant + targets, targets)
        torch.testing.assert_close(merged[b, pos], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged[b][~vis[b]], hidden[b][~vis[b]])


def test_merge_folds_each_token_into_its_most_similar_target():
    hidden = torch.arange(5.0).reshape(1, 5, 1)
    keys = torch.tensor([[[1.0, 0], [0, 1.0], [0.9, 0.1], [0.1, 0.9], [0.2, 0.8]]])
    vis = torch.ones(1, 5, dtype=torch.bool)
    scores = torch.tensor([[1.0, 1.0, -1, -1, -1]])          # targets 0 and 1, the rest removed
    out = visionzip.visionzip_merge(hidden, vis, scores > 0, scores, keys)
    assert out[0, :, 0].tolist() == [0 + 2, 1 + (3 + 4) / 2, 2, 3, 4]


def test_fake_and_schema():
    vis = torch.zeros(2, 8, dtype=torch.bool)
    vis[:, 1:7] = True
    dom, keys, hidden = torch.rand(2, 8), torch.randn(2, 8, 4), torch.randn(2, 8, 3)
    opcheck(torch.ops.vtp.visionzip_scores.default, (dom, vis, torch.tensor([3, 9]), 5, 32))
    s = visionzip.visionzip_scores(dom, vis, torch.tensor([3, 4]), 1, 3)
    opcheck(torch.ops.vtp.visionzip_merge.default, (hidden, vis, s > 0, s, keys))
