"""FastVID's density Triton kernels against the reference, in the interpreter: random frames
of mixed sizes (images and frames cut by ``frame_tokens``), partial pools, duplicates."""
import pytest
import torch

from vtp_compile.kernels import fastvid as ref
from vtp_compile.kernels.frames import frame_ids

from . import interpreted


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,L,D,cut", [(1, 1, 4, 0), (1, 5, 3, 0), (2, 37, 5, 6), (3, 70, 20, 16),
                                       (2, 90, 8, 0)])
def test_density_equals_the_reference(B, L, D, cut, dtype):
    td = interpreted("fastvid")
    g = torch.Generator().manual_seed(B * 1000 + L + cut)
    for p in (0.5, 1.0):
        h = torch.randn(B, L, D, generator=g).to(dtype)
        vis = torch.rand(B, L, generator=g) < 0.85
        frames = frame_ids(vis, None, cut)
        pool = vis & (torch.rand(B, L, generator=g) < p)
        got, want = td.fastvid_density(h, frames, pool), ref.fastvid_density(h, frames, pool)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-9)
        assert torch.equal(got == 0, want == 0)


def test_duplicates_and_lone_tokens():
    """Exact duplicates (distance 0: ties in ``m``), a frame of one pool token, an empty pool."""
    td = interpreted("fastvid")
    h = torch.randn(2, 12, 6)
    h[0, 2:6] = h[0, 2]
    vis = torch.ones(2, 12, dtype=torch.bool)
    frames = frame_ids(vis, None, 4)
    pool = vis.clone()
    pool[1, 4:7] = False                      # frame 1 of row 1 keeps one pool token
    for p in (pool, torch.zeros_like(pool)):
        torch.testing.assert_close(td.fastvid_density(h, frames, p), ref.fastvid_density(h, frames, p),
                                   atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,L,D,segs", [(1, 1, 4, 1), (1, 6, 3, 2), (2, 40, 5, 3), (3, 75, 20, 4)])
def test_targets_equal_the_reference(B, L, D, segs, dtype):
    """Segments are runs of positions with text (neither source nor target) between them."""
    td = interpreted("fastvid")
    g = torch.Generator().manual_seed(B * 1000 + L + segs)
    h = torch.randn(B, L, D, generator=g).to(dtype)
    seg = torch.sort(torch.randint(0, segs, (B, L), generator=g), dim=1).values
    member = torch.rand(B, L, generator=g) < 0.8
    target = member & (torch.rand(B, L, generator=g) < 0.3)
    source = member & ~target
    got, want = td.fastvid_targets(h, seg, source, target), ref.fastvid_targets(h, seg, source, target)
    assert torch.equal(got, want)
    assert torch.equal(got >= 0, source & (seg[:, :, None] == seg[:, None, :]).logical_and(target[:, None, :]).any(-1))


def test_targets_tie_to_the_lower_position():
    td = interpreted("fastvid")
    h = torch.randn(1, 70, 4)
    h[0, 10] = h[0, 60] = h[0, 40]                       # equal candidates far apart (other tiles)
    target = torch.zeros(1, 70, dtype=torch.bool)
    target[0, [10, 60]] = True
    source = torch.zeros_like(target)
    source[0, 40] = True
    seg = torch.zeros(1, 70, dtype=torch.long)
    assert td.fastvid_targets(h, seg, source, target)[0, 40] == 10
    assert ref.fastvid_targets(h, seg, source, target)[0, 40] == 10
