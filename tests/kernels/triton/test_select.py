"""select_keep's Triton kernels (keep mask + layout) against the reference, in the interpreter."""
import pytest
import torch

from vtp_compile.kernels import select as ref

from . import interpreted


SHAPES = [(1, 1), (1, 2), (2, 7), (3, 33), (2, 130), (1, 577)]   # 1 row, 1 token, odd widths


def _case(B, L, dtype, seed, ties=False, special=False):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, L, generator=g)
    if ties:
        s = (s * 2).round() / 2
    if special:
        s[:, ::3] = float("nan")
        s[:, 1::5] = float("-inf")
        s[:, 2::7] = float("inf")
    vis = torch.rand(B, L, generator=g) < 0.6
    live = torch.rand(B, L, generator=g) < 0.85
    n = torch.randint(0, L + 2, (B,), generator=g)
    return s.to(dtype), vis, live, n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,L", SHAPES)
def test_select_keep_equals_the_reference(B, L, dtype):
    tsel = interpreted("select")
    for seed, ties, special in [(0, False, False), (1, True, False), (2, False, True)]:
        case = _case(B, L, dtype, seed, ties, special)
        want = ref.select_keep(*case)
        got = tsel.select_keep(*case)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (B, L, seed)


@pytest.mark.parametrize("L,V,k", [(9, 4, 2), (9, 4, 4), (33, 20, 5), (2, 1, 0)])
def test_a_static_width_pads_the_reference_layout(L, V, k):
    """One row with the graph's static width: the reference's layout at that width."""
    tsel = interpreted("select")
    g = torch.Generator().manual_seed(L + V + k)
    vis = torch.zeros(1, L, dtype=torch.bool)
    vis[0, torch.randperm(L, generator=g)[:V]] = True
    live = torch.ones(1, L, dtype=torch.bool)
    live[0, :1] = V < L - 1                      # a padded row where there is room
    s, n = torch.randn(1, L, generator=g), torch.tensor([k])
    width = ref.static_width(L, V, k)
    want, got = ref.select_keep(s, vis, live, n, width), tsel.select_keep(s, vis, live, n, width)
    assert got[0].shape == (1, width)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_one_visual_token_and_everything_kept_or_dropped():
    tsel = interpreted("select")
    vis = torch.zeros(2, 9, dtype=torch.bool)
    vis[:, 4] = True
    live = torch.ones(2, 9, dtype=torch.bool)
    s = torch.randn(2, 9)
    for n in ([0, 1], [1, 1], [5, 0]):
        n = torch.tensor(n)
        want, got = ref.select_keep(s, vis, live, n), tsel.select_keep(s, vis, live, n)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_layout_reports_each_rows_width():
    tsel = interpreted("select")
    keep = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    idx, slot, width = tsel.layout_full(keep)
    assert width.tolist() == [4, 4, 1]          # kept + one dead slot when a row lost one
    assert idx[0, :3].tolist() == [0, 2, 3] and slot[0].tolist() == [True, True, True, False]
    assert not idx[2].any() and not slot[2].any()
