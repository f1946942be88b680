"""CDPruner's greedy DPP MAP Triton kernel against the reference, in the interpreter."""
import pytest
import torch

from vtp_compile.kernels import cdpruner as ref

from . import interpreted


def _kernel(B, V, D, dtype, g, theta=0.5):
    """A conditional DPP kernel of the method's form (full rank when D >= V) and a valid mask."""
    f = torch.nn.functional.normalize(torch.randn(B, V, D, generator=g), dim=-1)
    S = (f @ f.transpose(1, 2)).masked_fill(torch.eye(V, dtype=torch.bool), 1.0)
    q = torch.exp(theta * torch.rand(B, V, generator=g))
    valid = torch.rand(B, V, generator=g) < 0.8
    return (q[:, :, None] * S * q[:, None, :]).to(dtype), valid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,V,D", [(1, 1, 4), (1, 2, 3), (2, 7, 9), (3, 13, 16), (1, 21, 24)])
def test_dpp_greedy_equals_the_reference(B, V, D, dtype):
    td = interpreted("cdpruner")
    g = torch.Generator().manual_seed(B * 100 + V)
    kernel, valid = _kernel(B, V, D, dtype, g)
    for k in (torch.randint(0, V + 1, (B,), generator=g), torch.full((B,), V)):
        k = torch.minimum(k, valid.sum(1))
        torch.testing.assert_close(td.dpp_greedy(kernel, valid, k), ref.dpp_greedy(kernel, valid, k),
                                   atol=0, rtol=0)


def test_spent_rank_and_equal_gains():
    """Rank spent before k (D < V: the gains run out) and equal gains (ties: lowest index):
    the first D picks agree exactly, and every row picks exactly k tokens."""
    td = interpreted("cdpruner")
    g = torch.Generator().manual_seed(7)
    kernel, valid = _kernel(2, 11, 3, torch.float32, g)
    valid[:] = True
    k = torch.tensor([11, 6])
    got, want = td.dpp_greedy(kernel, valid, k), ref.dpp_greedy(kernel, valid, k)
    top = want >= (k[:, None] - 2).float()            # the first 3 picks of each row
    assert torch.equal(got[top], want[top])
    assert torch.equal((got > 0).sum(1), k)
    assert (td.dpp_greedy(kernel, valid, torch.zeros(2, dtype=torch.long)) == -1).all()   # k = 0
    eye = torch.eye(5)[None]                          # identity: all gains 1, picks in index order
    out = td.dpp_greedy(eye, torch.ones(1, 5, dtype=torch.bool), torch.tensor([3]))
    assert out.tolist() == [[3.0, 2.0, 1.0, -1.0, -1.0]]


def test_cdpruner_scores_through_the_kernel():
    """The decomposition's CUDA path (kernel matrix, then the Triton greedy) on CPU tensors."""
    td = interpreted("cdpruner")
    g = torch.Generator().manual_seed(3)
    B, L, D = 2, 19, 24
    h = torch.randn(B, L, D, generator=g)
    vis = torch.rand(B, L, generator=g) < 0.6
    live = torch.ones(B, L, dtype=torch.bool)
    n = torch.tensor([4, 30])
    order = torch.sort((~vis).to(torch.uint8), dim=1, stable=True).indices
    valid = torch.arange(L)[None, :] < vis.sum(1)[:, None]
    kernel = ref.dpp_kernel(h, vis, live, order, valid, 0.5)
    k = torch.minimum(n, valid.sum(1))
    got = ref._spread(td.dpp_greedy(kernel, valid, k), order, valid, L)
    torch.testing.assert_close(got, ref.cdpruner_scores(h, vis, live, n, 0.5), atol=0, rtol=0)
