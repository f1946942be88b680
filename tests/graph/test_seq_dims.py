import operator

import pytest
import torch

from vtp_compile.graph.fx_utils import Unsupported
from vtp_compile.graph.seq_dims import SeqDims, _view_groups


def _capture(fn, *args):
    graphs = []

    def backend(gm, ex, **kw):
        graphs.append(gm)
        return gm.forward

    torch.compile(fn, backend=backend, dynamic=False)(*args)
    return graphs[0]


def test_collision_hidden_equals_sequence_length():
    L = H = 8
    w = torch.randn(16, H)

    def f(x, w):
        y = torch.nn.functional.linear(x, w)          # [1, L, 16]
        y = y.view(1, L, 2, 8).transpose(1, 2)        # [1, 2, L, 8]
        return y.mean(-1, keepdim=True) + x.sum(-1, keepdim=True)[:, None]

    gm = _capture(f, torch.randn(1, L, H), w)
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" or n.op == "call_method"]
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    sd = SeqDims(nodes, x)
    view = next(n for n in nodes if n.target == "view")
    assert sd.seq_dims(x) == [1]                      # dim 2 (hidden) has the same size, not seq
    assert sd.seq_dims(view) == [1]
    assert view in sd.shape_edits


def test_merging_the_sequence_dim_is_unsupported():
    def f(x):
        return x.reshape(-1, 4) * 2

    gm = _capture(f, torch.randn(2, 6, 4))
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    nodes = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    with pytest.raises(Unsupported, match="merges"):
        SeqDims(nodes, x)


def test_view_groups():
    assert _view_groups([2, 23, 64], [2, 23, 4, 16]) == [([0], [0]), ([1], [1]), ([2], [2, 3])]
    assert _view_groups([1, 8, 8], [1, 8, 2, 4]) == [([1], [1]), ([2], [2, 3])]


def test_in_place_arithmetic_keeps_the_sequence_dim():
    """``x /= y`` (Mixtral's router normalises its top-k weights so) is the out-of-place op."""
    def f(x):
        y = x * 2
        y /= y.sum(-1, keepdim=True)
        y -= 1
        y **= 2
        return y

    gm = _capture(f, torch.randn(1, 6, 4))
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    nodes = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    sd = SeqDims(nodes, x)
    inplace = [n for n in nodes if n.target in (operator.itruediv, operator.isub, operator.ipow)]
    assert len(inplace) == 3 and all(sd.seq_dims(n) == [1] for n in inplace)
