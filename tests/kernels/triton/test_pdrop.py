"""PDrop's stage-count Triton kernel against the reference, in the interpreter."""
import pytest
import torch

from vtp_compile.kernels import pdrop as ref

from . import interpreted


@pytest.mark.parametrize("bounds,stage", [([2, 8], 1), ([1, 3, 5, 8], 1), ([1, 3, 5, 8], 3)])
def test_pdrop_keep_equals_the_reference(bounds, stage):
    """Rows without visual tokens, one token, odd counts, LLaVA's and Qwen's; ratio targets
    below and above 1, budgets from 1 to past V (interpreted: 60 halvings per call, so few calls)."""
    td = interpreted("pdrop")
    n = torch.tensor([0, 1, 2, 7, 33, 576, 1296, 300])
    for budget, num, den in ((0, 1, 3), (0, 5, 4), (1, 0, 1), (64, 0, 1)):
        want = ref.pdrop_keep(n, bounds, stage, budget, num, den)
        assert torch.equal(td.pdrop_keep(n, bounds, stage, budget, num, den), want), budget


def test_one_row():
    td = interpreted("pdrop")
    n = torch.tensor([576])
    assert torch.equal(td.pdrop_keep(n, [2, 6, 12, 32], 2, 192, 0, 1),
                       ref.pdrop_keep(n, [2, 6, 12, 32], 2, 192, 0, 1))
