"""``pdrop_keep`` against the oracle's plain-float bisection (vtp_compile/testing/oracle_baselines.py)."""
import torch

from vtp_compile.kernels.pdrop import pdrop_keep
from vtp_compile.testing.oracle_baselines import pdrop_count


def test_counts_equal_the_plain_loop_per_row():
    V = torch.tensor([1, 7, 16, 196, 576, 577, 1000])
    for layers, L in (([8, 16, 24], 32), ([1, 2, 3], 4), ([0, 2], 4), ([2, 8, 16, 24], 32)):
        for s in range(1, len(layers) + 1):
            for budget in (1, 12, 64, 192, 270, 2000):
                got = pdrop_keep(V, [*layers, L], s, budget, 0, 1).tolist()
                assert got == [pdrop_count(int(v), s, layers, L, budget=budget) for v in V]
            for num, den in ((1, 9), (1, 2), (1, 1)):
                got = pdrop_keep(V, [*layers, L], s, 0, num, den).tolist()
                assert got == [pdrop_count(int(v), s, layers, L, ratio=num / den) for v in V]


def test_layer_average_is_the_budget():
    """The official lambda = 0.5 schedule averages 270 of 576 over 32 layers; infeasible budgets
    keep one token per stage."""
    V = torch.tensor([576])
    assert [int(pdrop_keep(V, [8, 16, 24, 32], s, 270, 0, 1)) for s in (1, 2, 3)] == [288, 144, 72]
    assert [int(pdrop_keep(V, [8, 16, 24, 32], s, 64, 0, 1)) for s in (1, 2, 3)] == [1, 1, 1]
