"""The analysis of tensor-parallel graphs (:mod:`vtp_compile.graph.tp` and the DTensor /
collective rules of :mod:`vtp_compile.graph.seq_dims`), on graphs Dynamo captures in one process
with a fake process group of two ranks (collectives move no data: only the graphs matter)."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from vtp_compile.graph import tp
from vtp_compile.graph.fx_utils import Unsupported
from vtp_compile.graph.seq_dims import SeqDims

B, L, D = 2, 5, 8


@pytest.fixture
def mesh():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore
    dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
    try:
        yield init_device_mesh("cpu", (2,))
    finally:
        dist.destroy_process_group()


def _sharded(t, mesh, dim):
    from torch.distributed.tensor import Shard, distribute_tensor
    return torch.nn.Parameter(distribute_tensor(t, mesh, [Shard(dim)]))


class Layer(torch.nn.Module):
    """transformers' no-grad TP path: column-parallel q (2 heads x 4 per rank of 4 heads),
    row-parallel output projection, in-place all-reduce, residual."""

    def __init__(self, mesh, packed=False):
        super().__init__()
        self.w = _sharded(torch.randn(16, D), mesh, 0)
        self.wo = _sharded(torch.randn(D, 16), mesh, 1)
        self.packed = packed

    def forward(self, x):
        y = torch.nn.functional.linear(x, self.w.to_local())             # [B, L, 8]: 2 local heads
        if self.packed:     # q is half of a packed projection's output: 1 head of 4 per rank
            q = y[..., :4].view(x.shape[0], x.shape[1], 1, 4).transpose(1, 2)
            a = torch.nn.functional.scaled_dot_product_attention(q, q, q).repeat(1, 2, 1, 1)
        else:
            q = y.view(x.shape[0], x.shape[1], 2, 4).transpose(1, 2)      # [B, 2, L, 4]
            a = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        out = torch.nn.functional.linear(a.transpose(1, 2).reshape(x.shape[0], x.shape[1], 8),
                                         self.wo.to_local())
        dist.all_reduce(out)                 # Dynamo: all_reduce + wait_tensor + out.copy_(...)
        return x + out


def _capture(fn, *args):
    graphs = []

    def backend(gm, ex, **kw):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        torch.compile(fn, backend=backend, dynamic=False)(*args)
    return graphs[0]


def _nodes(gm):
    return [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


def _node(gm, pred):
    return next(n for n in gm.graph.nodes if pred(n))


def test_rules_follow_the_sequence_through_to_local_collectives_and_copy(mesh):
    gm = _capture(Layer(mesh), torch.randn(B, L, D))
    x = _node(gm, lambda n: n.op == "placeholder" and "x" in n.name)
    sd = SeqDims(_nodes(gm), x)
    wait = _node(gm, lambda n: n.target in tp.SAME_SHAPE_COLLECTIVES and "wait" in str(n.target))
    copy = _node(gm, lambda n: n.target == "copy_")
    to_local = _node(gm, lambda n: n.target == "to_local")
    q = _node(gm, lambda n: n.target == "transpose")
    assert sd.seq_dims(wait) == sd.seq_dims(copy) == [1]
    assert sd.seq_dims(q) == [2]
    assert sd.seq_dims(to_local) == []      # a weight: no sequence
    assert tp.find_tp(gm) == tp.TPInfo(mesh.get_group().group_name, 2)
    sdpa = _node(gm, lambda n: "scaled_dot_product_attention" in str(n.target))
    assert tp.heads_sharded(tp.find_tp(gm), _nodes(gm), sdpa.args[0])
    assert not tp.heads_sharded(None, _nodes(gm), sdpa.args[0])


def test_packed_projection_is_refused(mesh):
    gm = _capture(Layer(mesh, packed=True), torch.randn(B, L, D))
    sdpa = _node(gm, lambda n: "scaled_dot_product_attention" in str(n.target))
    with pytest.raises(Unsupported, match="unevenly or packed"):
        tp.heads_sharded(tp.find_tp(gm), _nodes(gm), sdpa.args[0])


def test_a_sharded_sequence_dim_is_refused(mesh):
    from torch.distributed.tensor import DTensor, Shard

    def f(x):     # sequence parallelism: the sequence dim is split across ranks
        return DTensor.from_local(x, mesh, [Shard(1)], run_check=False).redistribute(
            mesh, [Shard(1)]).to_local() * 2

    gm = _capture(f, torch.randn(B, L, D))
    x = _node(gm, lambda n: n.op == "placeholder")
    with pytest.raises(Unsupported, match="shards dim 1"):
        SeqDims(_nodes(gm), x)


def test_collectives_without_a_device_mesh_are_refused(mesh):
    def f(x):
        y = x * 2
        dist.all_reduce(y)
        return y

    gm = _capture(f, torch.randn(B, L, D))
    with pytest.raises(Unsupported, match="no DTensor device mesh"):
        tp.find_tp(gm)


def test_no_tensor_parallelism():
    gm = _capture(lambda x: x * 2, torch.randn(B, L, D))
    assert tp.find_tp(gm) is None


def test_contiguous_strides():
    assert tp.contiguous_strides((2, 5, 8)) == (40, 8, 1)
