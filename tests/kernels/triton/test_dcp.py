"""TATCS's k-means assignment kernel and its CUDA path against the reference, in the interpreter."""
import pytest
import torch

from vtp_compile.kernels import dcp as ref

from . import interpreted




@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,N,D", [(1, 1, 4), (1, 2, 3), (2, 7, 5), (3, 33, 8), (2, 70, 40)])
def test_cluster_select_scores_equal_the_reference(B, N, D, dtype):
    td = interpreted("dcp")
    g = torch.Generator().manual_seed(B * 100 + N)
    for it in (0, 3):
        f = torch.randn(B, N, D, generator=g).to(dtype)
        s = torch.rand(B, N, generator=g)
        vis = torch.rand(B, N, generator=g) < 0.7
        k = torch.randint(0, N + 2, (B,), generator=g)
        torch.testing.assert_close(td.cluster_select_scores(f, s, vis, k, it),
                                   ref.cluster_select_scores(f, s, vis, k, it), atol=0, rtol=0)


def test_assign_takes_the_most_similar_live_centroid():
    td = interpreted("dcp")
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(2, 37, 20, generator=g), dim=-1)
    cent = torch.nn.functional.normalize(torch.randn(2, 37, 20, generator=g), dim=-1)
    k = torch.tensor([5, 37])
    got = td.assign(f, cent, k)
    sim = torch.einsum("bnd,bkd->bnk", f, cent)
    sim = sim.masked_fill(torch.arange(37)[None, None, :] >= k[:, None, None], float("-inf"))
    assert torch.equal(got, sim.argmax(-1))
    assert int(got[0].max()) < 5
