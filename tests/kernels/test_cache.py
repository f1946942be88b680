"""Dead-slot markers and decode masks (vtp_compile/kernels/cache.py)."""
import pytest
import torch

from vtp_compile.kernels import cache

ops = torch.ops.vtp


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_markers_survive_every_float_dtype(dtype):
    v = torch.randn(2, 2, 5, 4).to(dtype)
    dead = torch.tensor([[False, False, True, True, False], [False] * 5])
    for layout in (cache.COMPACTED, cache.POSITIONAL):
        marked = ops.mark_dead(v, dead, True, layout)
        comp, pos = cache.dead_columns(marked)
        assert torch.equal(comp if layout == cache.COMPACTED else pos, dead)
        assert not (pos if layout == cache.COMPACTED else comp).any()
    keys = ops.mark_dead(v, dead, False, cache.COMPACTED)
    assert not keys[0, :, 2:4].any() and torch.equal(keys[1], v[1])
    assert not cache.dead_columns(keys)[0].any()


def test_decode_mask_overrides_compacted_rows_only():
    P, q = 4, 1
    past = torch.randn(3, 1, P, 2)
    past = ops.mark_dead(past, torch.tensor([[False, False, False, True], [False] * 4, [False] * 4]),
                         True, cache.COMPACTED)
    past = ops.mark_dead(past, torch.tensor([[False] * 4, [False] * 4, [False, True, False, False]]),
                         True, cache.POSITIONAL)
    # transformers' mask: row 0 and 2 left-padded by one (wrong for row 0's compacted cache)
    mask = torch.ones(3, 1, q, P + q, dtype=torch.bool)
    mask[0, ..., 0] = mask[2, ..., 0] = False
    out = ops.decode_mask(mask, past, q, False)
    assert out[0, 0, 0].tolist() == [True, True, True, False, True]     # live columns + new token
    assert out[1, 0, 0].tolist() == [True] * 5                           # untouched
    assert out[2, 0, 0].tolist() == [False, False, True, True, True]     # mask & not dead
    fmask = torch.zeros(3, 1, q, P + q).masked_fill(~mask, float("-inf"))
    assert torch.equal(ops.decode_mask(fmask, past, q, False) == 0, out)
    assert torch.equal(ops.decode_mask(None, past, q, False)[1], torch.ones(1, 1, 5, dtype=torch.bool))


def test_several_new_tokens_attend_causally_among_themselves():
    past = ops.mark_dead(torch.randn(1, 1, 3, 2), torch.tensor([[False, True, False]]), True,
                         cache.COMPACTED)
    out = ops.decode_mask(None, past, 2, True)
    assert out[0, 0].tolist() == [[True, False, True, True, False], [True, False, True, True, True]]


def test_positional_mask_hides_dead_slots_and_keeps_dead_queries_finite():
    """A static buffer's mask (slots are positions): transformers' mask minus the positionally
    dead slots; a dead query slot may attend anywhere (no all-masked row); an unmarked buffer
    leaves the mask as it is; additive float masks give the same pattern."""
    S = 5
    values = ops.mark_dead(torch.randn(2, 1, S, 2), torch.tensor([[False, True, False, False, False],
                                                                  [False] * S]), True, cache.POSITIONAL)
    mask = torch.ones(1, 1, 2, S, dtype=torch.bool).tril(2)        # two queries at positions 2, 3
    slot_live = torch.tensor([[True, False], [True, True]])
    out = ops.positional_mask(mask, values, slot_live)
    assert out.shape == (2, 1, 2, S)
    assert out[0, 0, 0].tolist() == [True, False, True, False, False]    # dead slot 1 hidden
    assert out[0, 0, 1].tolist() == [True] * S                           # a dead query: anything
    assert torch.equal(out[1], mask[0])                                  # no markers: unchanged
    fmask = torch.zeros(1, 1, 2, S).masked_fill(~mask, float("-inf"))
    assert torch.equal(ops.positional_mask(fmask, values, slot_live) == 0, out)
    assert torch.equal(ops.positional_mask(mask, values, None)[0, 0, 1],
                       torch.tensor([True, False, True, True, False]))
