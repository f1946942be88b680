"""DSTP's coverage-reserve Triton kernel against the reference, in the interpreter."""
import pytest
import torch

from vtp_compile.kernels import coverage as ref

from . import interpreted


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,L,D", [(1, 1, 4), (1, 2, 3), (2, 7, 5), (3, 33, 8), (2, 90, 16)])
def test_reserve_cover_equals_the_reference(B, L, D, dtype):
    td = interpreted("coverage")
    g = torch.Generator().manual_seed(B * 100 + L)
    for p_active in (0.0, 0.3):
        h = torch.randn(B, L, D, generator=g).to(dtype)
        cand = torch.rand(B, L, generator=g) < 0.7
        active = cand & (torch.rand(B, L, generator=g) < p_active)
        n = torch.randint(0, L + 2, (B,), generator=g)
        torch.testing.assert_close(td.reserve_cover(h, cand, active, n),
                                   ref.reserve_cover(h, cand, active, n), atol=0, rtol=0)


def test_duplicates_tie_to_the_lower_position():
    """Tiled (repeated) tokens tie exactly in float64; the kernel picks the lower position."""
    td = interpreted("coverage")
    h = torch.randn(2, 8, 4)
    h[1, 3:] = h[1, 3]
    cand = torch.ones(2, 8, dtype=torch.bool)
    active = torch.zeros(2, 8, dtype=torch.bool)
    active[0, 2] = True
    n = torch.tensor([3, 8])
    torch.testing.assert_close(td.reserve_cover(h, cand, active, n),
                               ref.reserve_cover(h, cand, active, n), atol=0, rtol=0)
