"""Sequence-dimension provenance.

Given the region of the graph that runs on a shortened sequence (the layers after a pruning
site) and the hidden state entering it, find exactly which dimensions of which values are "the
sequence". Every tensor dimension is a variable; each op's shape semantics unify variables
(broadcasting aligns from the right, ``view`` groups dims by cumulative-product boundaries,
``linear``/``matmul`` by their contraction rules, SDPA ties query/key/value/mask dims). A dim is
the sequence iff it is unified with the entry's sequence dim. A literal that merely *equals* the
sequence length is never touched, because equality of sizes alone unifies nothing. An op the
rules do not cover makes the whole graph unsupported (never a guess).
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from . import tp
from .fx_utils import (IDENTITY_METHODS, Unsupported, is_one, is_pointwise, is_sdpa,
                       is_static_cache_write, op_name, same_size, sdpa_args, tensor_val, val)

SEQ, BATCH = ("<seq>", 0), ("<batch>", 0)
_SCALARS = (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool)
_SHAPE_METHODS = {"view", "reshape", "expand"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "var", "std", "norm", "prod", "logsumexp"}
_SAME_SHAPE_DIM = {"softmax", "log_softmax", "cumsum", "cumprod"}
# ops returning several tensors along one dim (consumed through getitem): name -> dim argument
# position, and whether that dim is removed (unbind) rather than resized
_MULTI = {"chunk": (2, False), "split": (2, False), "tensor_split": (2, False),
          "split_with_sizes": (2, False), "unbind": (1, True), "topk": (2, False),
          "sort": (1, False), "max": (1, True), "min": (1, True)}
_MULTI_DEFAULT_DIM = {"chunk": 0, "split": 0, "tensor_split": 0, "split_with_sizes": 0,
                      "unbind": 0, "topk": -1, "sort": -1}


class SeqDims:
    """Union-find over (node, dim) pairs, seeded with the entry's batch and sequence dims."""

    def __init__(self, region: list[fx.Node], entry: fx.Node, seq_dim: int = 1, batch_dim: int = 0):
        self.region = region
        self.region_set = set(region)
        self.entry = entry
        self.parent: dict = {}
        self.shape_edits: list[fx.Node] = []
        self.dtensor_edits: list[fx.Node] = []   # from_local(..., shape=, stride=) (tensor parallel)
        self.no_seq: list[tuple] = []   # vars that must not be the sequence (cat joins, merged views)
        self._slices: list[tuple] = []  # (node, input, input dim) of partial slices
        self._multis: dict = {}         # multi-output node -> (input, dim, dim removed)
        self._consts: list = []         # tensors created in the region from no tensor input
        self.static_writes: list = []   # static-cache writes (index_copy_): the pass places them
        self._union((entry, seq_dim), SEQ)
        self._union((entry, batch_dim), BATCH)
        for n in region:
            self._visit(n)
        for var, why in self.no_seq:
            if self._find(var) == self._find(SEQ):
                raise Unsupported(f"{why} involves the sequence dimension")
        for n in self._consts:
            if self.seq_dims(n):       # e.g. positions made with arange(L) inside a layer
                raise Unsupported(f"{n.format_node()[:120]} creates a tensor along the sequence "
                                  "inside the pruned layers")
        # partial slices of the sequence: the pass decides (a sliding-window cache write keeps
        # the last positions of the full-length cache; anything else is refused)
        self.seq_slices = [(n, x, d) for n, x, d in self._slices if self.is_seq(x, d)]

    # ---- union-find -------------------------------------------------------------------------
    def _find(self, x):
        p = self.parent.setdefault(x, x)
        if p != x:
            p = self.parent[x] = self._find(p)
        return p

    def _union(self, a, b):
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            # keep the special markers as roots
            if rb in (SEQ, BATCH):
                ra, rb = rb, ra
            self.parent[rb] = ra

    def is_seq(self, node, dim) -> bool:
        return self._find((node, dim)) == self._find(SEQ)

    def seq_dims(self, node) -> list[int]:
        v = tensor_val(node)
        return [] if v is None else [d for d in range(v.dim()) if self.is_seq(node, d)]

    def batch_dim(self, node) -> int | None:
        v = tensor_val(node)
        for d in range(v.dim() if v is not None else 0):
            if self._find((node, d)) == self._find(BATCH):
                return d
        return None

    # ---- rules ------------------------------------------------------------------------------
    def _tie(self, a, da, b, db):
        va, vb = tensor_val(a), tensor_val(b)
        if is_one(va.shape[da]) or is_one(vb.shape[db]):
            return  # broadcasting: a size-1 dim is not the same axis
        self._union((a, da), (b, db))

    def _broadcast(self, n, inputs):
        out = tensor_val(n)
        for a in inputs:
            va = tensor_val(a)
            off = out.dim() - va.dim()
            for i in range(va.dim()):
                self._tie(n, off + i, a, i)

    def _visit(self, n: fx.Node):
        out = tensor_val(n)
        ins = [a for a in n.all_input_nodes if tensor_val(a) is not None]
        name = op_name(n)
        if out is None:
            if n.op == "call_method" and n.target == "size" or n.target is getattr:
                return  # sizes are read from the rewritten tensors at run time
            if isinstance(val(n), (tuple, list)) and name in _MULTI:
                return self._multi(n)
            if isinstance(val(n), _SCALARS) and all(tensor_val(a).dim() == 0 for a in ins):
                return  # a scalar from 0-d tensors (e.g. .item() of a dynamic module attribute)
            raise Unsupported(f"non-tensor node {n.format_node()[:120]} in pruned region")
        if n.op == "call_function" and n.target is operator.getitem and n.args[0] in self._multis:
            return self._getitem(n)
        if not ins:
            self._consts.append(n)   # made in the region (an empty cache, an arange): checked below
            return
        if is_sdpa(n):
            return self._sdpa(n)
        if is_static_cache_write(n):
            # buffer slots are not the sequence; the states are written at positions the pass
            # chooses (passes/kv/static.py), so nothing is tied
            self.static_writes.append(n)
            return
        if n.op == "call_function" and n.target in (torch._C._nn.linear, torch.nn.functional.linear):
            x = n.args[0]
            for d in range(out.dim() - 1):
                self._tie(n, d, x, d)
            return
        if name in ("matmul", "bmm") or n.target is operator.matmul:
            return self._matmul(n, n.args[0], n.args[1])
        if name in _SHAPE_METHODS or (n.op == "call_function" and n.target is torch.reshape):
            return self._view_like(n, name if name != "reshape" or n.op == "call_method" else "reshape")
        if name == "transpose":
            x, d0, d1 = n.args[0], n.args[1] % out.dim(), n.args[2] % out.dim()
            perm = list(range(out.dim()))
            perm[d0], perm[d1] = perm[d1], perm[d0]
            for o, i in enumerate(perm):
                self._tie(n, o, x, i)
            return
        if name == "permute":
            x = n.args[0]
            perm = n.args[1] if isinstance(n.args[1], (list, tuple)) else n.args[1:]
            for o, i in enumerate(perm):
                self._tie(n, o, x, i % out.dim())
            return
        if name == "unsqueeze":
            x, d = n.args[0], n.args[1] % out.dim()
            src = [i for i in range(out.dim()) if i != d]
            for i, o in enumerate(src):
                self._tie(n, o, x, i)
            return
        if n.op == "call_function" and n.target is operator.getitem:
            return self._getitem(n)
        if name == "cat":
            return self._cat(n)
        if name == "stack":
            return self._stack(n)
        if name == "flatten":
            return self._flatten(n)
        if name in _REDUCTIONS:
            return self._reduction(n)
        if name in _SAME_SHAPE_DIM or name in IDENTITY_METHODS or is_pointwise(n):
            return self._broadcast(n, ins)
        if self._tensor_parallel(n, name, ins):
            return
        raise Unsupported(f"no sequence-dimension rule for {n.format_node()[:160]}")

    # ---- tensor parallelism (DTensor ops, functional collectives; see .tp) ------------------
    def _tensor_parallel(self, n, name, ins) -> bool:
        """DTensor conversions and collectives keep every dim; a dim sharded on either side
        has different local and global sizes and is never the sequence (sequence parallelism
        is refused, not rewritten)."""
        if n.op == "call_method" and name == "copy_":      # in-place write-back of an all-reduce
            self._broadcast(n, ins)
            return True
        if (n.op == "call_method" and name in tp.DTENSOR_METHODS) or tp.is_from_local(n):
            x = n.args[0]
            self._one_to_one(n, x, tp.sharded_dims(tensor_val(n)) | tp.sharded_dims(tensor_val(x)), name)
            if tp.is_from_local(n):
                self.dtensor_edits.append(n)
            return True
        if n.op == "call_function" and n.target in tp.SAME_SHAPE_COLLECTIVES:
            self._one_to_one(n, n.args[0], set(), name)
            return True
        if n.op == "call_function" and n.target in tp.DIM0_COLLECTIVES:
            self._one_to_one(n, n.args[0], {0}, name)
            return True
        return False

    def _one_to_one(self, n, x, forbid: set, why: str):
        out, xv = tensor_val(n), tensor_val(x)
        if xv is None or xv.dim() != out.dim():
            raise Unsupported(f"{why} {n.name} changes the rank")
        for d in range(out.dim()):
            if d in forbid:
                self.no_seq.append(((n, d), f"{why} {n.name} shards dim {d}"))
                self.no_seq.append(((x, d), f"{why} {n.name} shards dim {d}"))
            else:
                self._tie(n, d, x, d)

    def _sdpa(self, n):
        a = sdpa_args(n)
        q, k, v, m = a["query"], a["key"], a["value"], a["attn_mask"]
        qv = tensor_val(q)
        r = qv.dim()
        for t in (k, v):
            for d in range(r - 2):
                self._tie(q, d, t, d) if not a["enable_gqa"] or d != r - 3 else None
        self._tie(k, r - 2, v, r - 2)
        self._tie(q, r - 1, k, r - 1)
        for d in range(r - 1):
            self._tie(n, d, q, d)
        self._tie(n, r - 1, v, r - 1)
        if isinstance(m, fx.Node):
            mv = tensor_val(m)
            off = r - mv.dim()
            for d in range(mv.dim() - 2):
                self._tie(m, d, q, off + d)
            self._tie(m, mv.dim() - 2, q, r - 2)
            self._tie(m, mv.dim() - 1, k, r - 2)

    def _matmul(self, n, a, b):
        out, va, vb = tensor_val(n), tensor_val(a), tensor_val(b)
        if va.dim() < 2 or vb.dim() < 2:
            raise Unsupported("matmul with a vector operand in pruned region")
        self._tie(n, out.dim() - 2, a, va.dim() - 2)
        self._tie(n, out.dim() - 1, b, vb.dim() - 1)
        self._tie(a, va.dim() - 1, b, vb.dim() - 2)
        for t, vt in ((a, va), (b, vb)):
            off = out.dim() - vt.dim()
            for i in range(vt.dim() - 2):
                self._tie(n, off + i, t, i)

    def _view_like(self, n, name):
        x = n.args[0]
        xv, out = tensor_val(x), tensor_val(n)
        if name == "expand":
            off = out.dim() - xv.dim()
            for i in range(xv.dim()):
                self._tie(n, off + i, x, i)
        else:
            for group_in, group_out in _view_groups(list(xv.shape), list(out.shape)):
                if len(group_in) == 1 and len(group_out) == 1:
                    self._tie(n, group_out[0], x, group_in[0])
                else:
                    for i in group_in:
                        self.no_seq.append(((x, i), f"{n.name} merges or splits dims"))
                    for o in group_out:
                        self.no_seq.append(((n, o), f"{n.name} merges or splits dims"))
        self.shape_edits.append(n)

    def _multi(self, n):
        """chunk/split/unbind/topk/sort/max(dim): every output keeps the input's other dims."""
        x = n.args[0]
        xv = tensor_val(x)
        pos, removed = _MULTI[op_name(n)]
        dim = n.kwargs.get("dim", n.args[pos] if len(n.args) > pos else _MULTI_DEFAULT_DIM.get(op_name(n)))
        if xv is None or not isinstance(dim, int):
            raise Unsupported(f"no sequence-dimension rule for {n.format_node()[:160]}")
        dim %= xv.dim()
        self.no_seq.append(((x, dim), f"{op_name(n)} {n.name}"))
        self._multis[n] = (x, dim, removed)

    def _stack(self, n):
        tensors = n.args[0] if n.args else n.kwargs["tensors"]
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0) % tensor_val(n).dim()
        for t in tensors:
            for i in range(tensor_val(t).dim()):
                self._tie(n, i if i < dim else i + 1, t, i)

    def _flatten(self, n):
        x = n.args[0]
        xv = tensor_val(x)
        start = n.kwargs.get("start_dim", n.args[1] if len(n.args) > 1 else 0) % max(xv.dim(), 1)
        end = n.kwargs.get("end_dim", n.args[2] if len(n.args) > 2 else -1) % max(xv.dim(), 1)
        for i in range(start):
            self._tie(n, i, x, i)
        for i in range(end + 1, xv.dim()):
            self._tie(n, i - (end - start), x, i)
        if end > start:
            for i in range(start, end + 1):
                self.no_seq.append(((x, i), f"{n.name} merges dims"))
            self.no_seq.append(((n, start), f"{n.name} merges dims"))

    def _getitem(self, n):
        x, idx = n.args
        xv, out = tensor_val(x), tensor_val(n)
        if xv is None and x in self._multis and isinstance(idx, int):
            src, dim, removed = self._multis[x]
            sv = tensor_val(src)
            o = 0
            for i in range(sv.dim()):
                if i == dim and removed:
                    continue
                if i != dim:
                    self._tie(n, o, src, i)
                o += 1
            return
        if xv is None:
            raise Unsupported(f"getitem on a non-tensor in pruned region: {n.name}")
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in idx):
            raise Unsupported(f"advanced indexing {n.name} in pruned region")
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        expanded = []
        for i in idx:
            if i is Ellipsis:
                expanded += [slice(None)] * (xv.dim() - n_real)
            else:
                expanded.append(i)
        expanded += [slice(None)] * (xv.dim() - sum(1 for i in expanded if i is not None))
        xd = od = 0
        for i in expanded:
            if i is None:
                od += 1
            elif isinstance(i, int):
                self.no_seq.append(((x, xd), f"integer index {n.name}"))
                xd += 1
            else:
                if i == slice(None):
                    self._tie(n, od, x, xd)
                else:
                    self._slices.append((n, x, xd))
                xd += 1
                od += 1

    def _cat(self, n):
        tensors = n.args[0] if n.args else n.kwargs["tensors"]
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
        out = tensor_val(n)
        dim %= out.dim()
        live = []
        for t in tensors:
            tv = tensor_val(t)
            if tv.dim() == 1 and same_size(tv.shape[0], 0):
                continue  # legacy: 1-D empty tensors are skipped by cat
            if tv.dim() != out.dim():
                raise Unsupported(f"cat of mismatched ranks at {n.name}")
            for d in range(out.dim()):
                if d != dim:
                    self._tie(n, d, t, d)
            if not same_size(tv.shape[dim], 0):
                live.append(t)
        if len(live) == 1:
            self._tie(n, dim, live[0], dim)
        else:
            self.no_seq.append(((n, dim), f"cat {n.name}"))
            for t in live:
                self.no_seq.append(((t, dim), f"cat {n.name}"))

    def _reduction(self, n):
        x = n.args[0]
        xv, out = tensor_val(x), tensor_val(n)
        dims = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
        if dims is None:
            raise Unsupported(f"full reduction {n.name} in pruned region")
        dims = {d % xv.dim() for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
        o = 0
        for i in range(xv.dim()):
            if i in dims:
                self.no_seq.append(((x, i), f"reduction {n.name}"))
                o += 1 if keep else 0
            else:
                self._tie(n, o, x, i)
                o += 1


def _view_groups(src: list, dst: list):
    """Pair up groups of dims with equal products (size-1 dims stand alone)."""
    si = [i for i, s in enumerate(src) if not is_one(s)]
    di = [i for i, s in enumerate(dst) if not is_one(s)]
    groups, a, b = [], 0, 0
    while a < len(si) and b < len(di):
        ga, gb = [si[a]], [di[b]]
        pa, pb = src[si[a]], dst[di[b]]
        a += 1
        b += 1
        guard = 0
        while not same_size(pa, pb):
            guard += 1
            if guard > 64:
                raise Unsupported("cannot align view dimensions")
            if _lt(pa, pb) and a < len(si):
                ga.append(si[a]); pa = pa * src[si[a]]; a += 1
            elif b < len(di):
                gb.append(di[b]); pb = pb * dst[di[b]]; b += 1
            elif a < len(si):
                ga.append(si[a]); pa = pa * src[si[a]]; a += 1
            else:
                raise Unsupported("cannot align view dimensions")
        groups.append((ga, gb))
    if a != len(si) or b != len(di):
        raise Unsupported("cannot align view dimensions")
    return groups


def _lt(a, b) -> bool:
    from torch.fx.experimental.symbolic_shapes import statically_known_true
    if isinstance(a, int) and isinstance(b, int):
        return a < b
    try:
        return bool(statically_known_true(a < b))
    except Exception:
        return False
