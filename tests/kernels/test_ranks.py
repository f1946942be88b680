"""kernels/ranks.py: ranks and inverse permutations by argsort, checked against their definition
on drawn rows with ties (a plain loop: place in the stable sort, lower position first)."""
import torch
from hypothesis import given, settings, strategies as st

from vtp_compile.kernels.ranks import inverse, ranks


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 4), length=st.integers(1, 40), levels=st.integers(1, 6),
       descending=st.booleans(), seed=st.integers(0, 2**16))
def test_ranks_are_places_in_the_stable_order(rows, length, levels, descending, seed):
    g = torch.Generator().manual_seed(seed)
    key = torch.randint(0, levels, (rows, length), generator=g).float()     # many ties
    got = ranks(key, descending=descending)
    for b in range(rows):
        vals = key[b].tolist()
        order = sorted(range(length), key=lambda i: ((-vals[i] if descending else vals[i]), i))
        want = [0] * length
        for place, i in enumerate(order):
            want[i] = place
        assert got[b].tolist() == want
    perm = torch.sort(key, dim=1, descending=descending, stable=True).indices
    assert torch.equal(perm.gather(1, inverse(perm)), torch.arange(length).expand(rows, length))
