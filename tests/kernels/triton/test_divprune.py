"""divprune's greedy Triton kernel against the reference, in the interpreter."""
import pytest
import torch

from vtp_compile.kernels import divprune as ref

from . import interpreted




@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,L,D", [(1, 1, 4), (1, 2, 3), (2, 7, 5), (3, 33, 8), (2, 90, 16)])
def test_divprune_scores_equal_the_reference(B, L, D, dtype):
    td = interpreted("divprune")
    g = torch.Generator().manual_seed(B * 100 + L)
    for p in (0.3, 0.7, 1.0):
        h = torch.randn(B, L, D, generator=g).to(dtype)
        vis = torch.rand(B, L, generator=g) < p
        n = torch.randint(0, L + 2, (B,), generator=g)
        torch.testing.assert_close(td.divprune_scores(h, vis, n), ref.divprune_scores(h, vis, n),
                                   atol=0, rtol=0)


def test_one_visual_token_and_duplicates():
    """One visual token; repeated features (distance 0 ties broken by position)."""
    td = interpreted("divprune")
    h = torch.randn(2, 6, 4)
    h[1, 2:] = h[1, 2]
    vis = torch.tensor([[0, 0, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    n = torch.tensor([3, 4])
    torch.testing.assert_close(td.divprune_scores(h, vis, n), ref.divprune_scores(h, vis, n),
                               atol=0, rtol=0)
