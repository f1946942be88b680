"""Tensor parallelism in Dynamo graphs: DTensor ops, functional collectives, the TP group.

transformers' ``tp_plan="auto"`` (under ``torchrun``) shards the decoder's linears as DTensor
parameters on a 1-D device mesh. Under ``no_grad`` (``generate``, inference) the graph reads each
weight with ``W.to_local()`` and runs plain ``linear`` on local tensors: the column-parallel
q/k/v/gate/up projections give this rank's slice of the heads and features; each row-parallel
o_proj/down_proj is followed by ``_c10d_functional.all_reduce`` + ``wait_tensor`` and an in-place
``copy_`` back, so the hidden state between layers is replicated. With grad enabled the
activations themselves are DTensors (``from_local`` / ``redistribute`` / ``to_local``).

What the passes need from that (the rules themselves live in :mod:`.seq_dims`):

* :func:`find_tp`: the graph's TP group (one 1-D mesh) or None;
* :func:`heads_sharded`: whether a layer's attention heads are split across ranks;
* :func:`full_heads`: all-gather a scoring layer's q/k over the group inside the graph, so every
  rank scores with every head, exactly as one process does;
* :func:`agree`: every rank adopts the group's first rank's scores (identical selection by
  construction, also if some kernel were not bit-reproducible across ranks).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from .fx_utils import Unsupported, tensor_val

C10D = torch.ops._c10d_functional
# collectives whose output has the input's shape
SAME_SHAPE_COLLECTIVES = {C10D.all_reduce, C10D.all_reduce.default, C10D.all_reduce_,
                          C10D.all_reduce_.default, C10D.wait_tensor, C10D.wait_tensor.default,
                          C10D.broadcast, C10D.broadcast.default}
# collectives that concatenate or split along dim 0
DIM0_COLLECTIVES = {C10D.all_gather_into_tensor, C10D.all_gather_into_tensor.default,
                    C10D.reduce_scatter_tensor, C10D.reduce_scatter_tensor.default}
DTENSOR_METHODS = ("to_local", "redistribute", "full_tensor")


def _dtensor_cls():
    try:
        from torch.distributed.tensor import DTensor
    except Exception:  # pragma: no cover (torch built without distributed)
        return None
    return DTensor


def is_dtensor(v) -> bool:
    cls = _dtensor_cls()
    return cls is not None and isinstance(v, cls)


def is_from_local(n: fx.Node) -> bool:
    cls = _dtensor_cls()
    if cls is None or n.op != "call_function":
        return False
    from torch.distributed.tensor import _api
    return n.target in (getattr(_api, "from_local", None), cls.from_local)


def is_collective(n: fx.Node) -> bool:
    return n.op == "call_function" and (n.target in SAME_SHAPE_COLLECTIVES or n.target in DIM0_COLLECTIVES
                                        or getattr(n.target, "namespace", None) == "_c10d_functional")


def sharded_dims(v) -> set[int]:
    """Tensor dims a DTensor value is sharded on (empty for a plain tensor)."""
    if not is_dtensor(v):
        return set()
    return {p.dim % v.dim() for p in v.placements if p.is_shard()}


# ---- the group ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TPInfo:
    """The tensor-parallel group of a graph's decoder."""
    group_name: str
    size: int


def find_tp(gm: fx.GraphModule) -> TPInfo | None:
    """The one 1-D device mesh the graph's DTensors live on; None without DTensors and
    collectives. Refused: collectives without a mesh (hand-written TP: how heads are split is
    unknown), several meshes, a mesh of more than one dimension, a mesh whose order is not its
    process group's rank order (shard ``i`` must be the group's rank ``i``)."""
    meshes, colls = {}, False
    for n in gm.graph.nodes:
        v = n.meta.get("example_value", n.meta.get("val"))
        if is_dtensor(v):
            meshes[id(v.device_mesh)] = v.device_mesh
        colls = colls or is_collective(n)
    if not meshes:
        if colls:
            raise Unsupported("collectives in the graph but no DTensor device mesh: cannot tell how "
                              "attention heads are split across ranks")
        return None
    uniq = {(tuple(m.mesh.flatten().tolist()), m.device_type, m.ndim): m for m in meshes.values()}
    if len(uniq) != 1:
        raise Unsupported(f"{len(uniq)} different device meshes in one graph")
    (mesh,) = uniq.values()
    if mesh.ndim != 1:
        raise Unsupported(f"a {mesh.ndim}-D device mesh (tensor parallelism on a 1-D mesh only)")
    import torch.distributed as dist
    pg = mesh.get_group()
    if [dist.get_group_rank(pg, r) for r in mesh.mesh.tolist()] != list(range(mesh.size())):
        raise Unsupported("device mesh order differs from its process group's rank order")
    return TPInfo(pg.group_name, mesh.size())


def heads_sharded(tp: TPInfo | None, layer_nodes: list[fx.Node], q: fx.Node) -> bool:
    """Whether attention query ``q`` (an SDPA argument of a layer) holds this rank's share of
    the heads: it derives from a DTensor sharded on its last dim (a column-parallel projection's
    ``Shard(0)`` weight, or a ``Shard(-1)`` activation). Checked: the shares are equal and add
    up to the projection's heads (packed or uneven projections are refused)."""
    if tp is None:
        return False
    layer = set(layer_nodes)
    seen, work, src = set(), [q], None
    while work and src is None:
        n = work.pop()
        if n in seen:
            continue
        seen.add(n)
        v = tensor_val(n)
        if is_dtensor(v) and sharded_dims(v):
            src = v
            break
        work.extend(a for a in n.all_input_nodes if a in layer or a.op == "placeholder")
    if src is None:
        return False
    qv = tensor_val(q)
    heads, hd = int(qv.shape[1]), int(qv.shape[-1])
    if src.dim() == 2:    # a Shard(0) weight [out, in]: out = heads * head_dim over all ranks
        total = int(src.shape[0])
    else:                 # a Shard(-1) activation [..., heads * head_dim]
        total = int(src.shape[-1])
    if sharded_dims(src) != {0 if src.dim() == 2 else src.dim() - 1} or heads * hd * tp.size != total:
        raise Unsupported(f"attention heads split unevenly or packed across {tp.size} ranks "
                          f"({heads} local heads x {hd} x {tp.size} ranks vs {total})")
    return True


def full_heads(g: fx.Graph, tp: TPInfo | None, layer_nodes: list[fx.Node], query: fx.Node,
               *xs: fx.Node) -> tuple:
    """``xs`` (``[B, heads, ...]`` tensors of a layer whose ``query`` is ``heads_sharded``) with
    every rank's heads, in head order; unchanged when heads are not split."""
    if not heads_sharded(tp, layer_nodes, query):
        return xs
    return tuple(g.call_function(gather_heads, (x, tp.size, tp.group_name)) for x in xs)


# ---- helpers traced into the graph -----------------------------------------------------------
def gather_heads(x: torch.Tensor, group_size: int, group_name: str) -> torch.Tensor:
    """``[B, H_local, ...]`` on every rank -> ``[B, H_local * group_size, ...]``: the group's
    rank order is the head order of a column-parallel projection (``Shard(0)`` rows)."""
    xs = x.transpose(0, 1).contiguous()                                  # heads first
    out = C10D.wait_tensor(C10D.all_gather_into_tensor(xs, group_size, group_name))
    return out.transpose(0, 1).contiguous()


def agree(scores: torch.Tensor, group_size: int, group_name: str) -> torch.Tensor:
    """The group's first rank's ``scores`` ``[B, L]`` on every rank: ranks that selected
    different tokens would make the row-parallel all-reduce add up partial sums of different
    tokens at the same slot (a silently wrong answer no cross-rank comparison of outputs sees)."""
    B = scores.shape[0]
    out = C10D.wait_tensor(C10D.all_gather_into_tensor(scores.contiguous(), group_size, group_name))
    return out[:B]


def contiguous_strides(shape) -> tuple:
    """Strides of a contiguous tensor of ``shape`` (a rewritten ``from_local(shape=, stride=)``)."""
    out, acc = [], 1
    for s in reversed(tuple(shape)):
        out.append(acc)
        acc = acc * s
    return tuple(reversed(out))


def edit_from_local(g: fx.Graph, n: fx.Node, seq_dims: list[int], new_len: fx.Node) -> None:
    """``from_local(x, mesh, placements, shape=, stride=)`` (an activation entering a
    row-parallel linear with grad enabled) names the global shape and strides as literals:
    the sequence entries become ``new_len``, the strides are recomputed."""
    if not seq_dims:
        return
    shape, stride = n.kwargs.get("shape"), n.kwargs.get("stride")
    if shape is None and stride is None:
        return
    if shape is None or stride is None or len(shape) != tensor_val(n).dim():
        raise Unsupported(f"cannot read shape/stride of {n.name}")
    if tuple(stride) != contiguous_strides(shape):
        raise Unsupported(f"{n.name}: from_local with non-contiguous strides {tuple(stride)}")
    shape = list(shape)
    for d in seq_dims:
        shape[d] = new_len
    with g.inserting_before(n):
        st = g.call_function(contiguous_strides, (tuple(shape),))
    n.kwargs = {**n.kwargs, "shape": tuple(shape), "stride": st}
