"""What vtp did to each graph it compiled: reports, reachable from the compiled model.

Every graph the ``vtp`` backend compiles gets a :class:`GraphReport` (its phase, each pruning
site as compiled, what each pass inserted, or why the graph was left unpruned). Reports are kept
with the model they belong to, not in a process-wide list:

>>> compiled = torch.compile(model, backend="vtp", options={"method": "fastv", "budget": 64})
>>> compiled(**inputs)
>>> vtp_compile.reports(compiled)[-1].sites[0].kept       # or reports(model): the same
64

and :func:`recording` collects the reports of whatever compiles inside a ``with`` block. A
model's reports go when the model goes (they are held by its parameters, weakly).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import weakref
from typing import Iterator

import torch


@dataclasses.dataclass
class SiteReport:
    """One pruning site as compiled (sizes from the example inputs of the compile)."""
    name: str
    layer: int | None          # None for an encoder site (before layer 0)
    visual_count: int
    kept: int
    flops_saved: int
    flops_total: int
    kv_bytes_saved: int
    reserve: int = 0           # DSTP: tokens carried (keys/values kept) but not attended to
    static_cache: bool = False  # a preallocated cache: its size does not change (kv_bytes_saved 0)

    def line(self) -> str:
        where = "encoder (before layer 0)" if self.layer is None else f"layer {self.layer}"
        pct = 100.0 * self.flops_saved / max(1, self.flops_total)
        res = f" (+{self.reserve} reserve)" if self.reserve else ""
        kv = ("static KV cache (preallocated: same size, removed slots masked)" if self.static_cache
              else f"KV cache -{self.kv_bytes_saved / 1024:.1f} KiB")
        return (f"vtp: {self.name} at {where}: visual tokens {self.visual_count} -> {self.kept}{res}, "
                f"~{self.flops_saved / 1e9:.3g} GFLOPs saved ({pct:.1f}% of the decoder), {kv}")


@dataclasses.dataclass
class PassReport:
    """One pass over one graph: the nodes it inserted, by op."""
    name: str
    inserted: dict[str, int] = dataclasses.field(default_factory=dict)

    def line(self) -> str:
        ops = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(self.inserted.items()))
        return f"{self.name}: {sum(self.inserted.values())} node(s) inserted" + (f" ({ops})" if ops else "")


@dataclasses.dataclass
class GraphReport:
    phase: str                  # "prefill", "decode", "splice", or "unrecognised"
    sites: list[SiteReport] = dataclasses.field(default_factory=list)
    decode_masks: int = 0       # decode graphs: attention calls whose mask reads the cache
    skipped: str | None = None  # why the graph was left unpruned
    passes: list[PassReport] = dataclasses.field(default_factory=list)
    layouts: dict[str, int] = dataclasses.field(default_factory=dict)  # KV layout kind -> layers
    seq: int = dataclasses.field(default=-1, repr=False, compare=False)   # compile order


# ---- where reports are kept -----------------------------------------------------------------------
# id(parameter) -> the reports of graphs that read it (the first parameter each graph reads);
# an entry goes when its parameter does (weakref.finalize; tensors compare elementwise, so a
# WeakKeyDictionary cannot hold them)
_BY_PARAMETER: dict[int, list[GraphReport]] = {}
_RECORDERS: list[list[GraphReport]] = []    # open `recording()` blocks (empty outside them)
_ORDER = itertools.count()


def file_report(report: GraphReport, gm, example_inputs) -> None:
    """Keep ``report`` with the model whose graph ``gm`` is (and in every open recording)."""
    report.seq = next(_ORDER)
    key = _first_parameter(gm, example_inputs)
    if key is not None:
        if id(key) not in _BY_PARAMETER:
            _BY_PARAMETER[id(key)] = []
            weakref.finalize(key, _BY_PARAMETER.pop, id(key), None)
        _BY_PARAMETER[id(key)].append(report)
    for rec in _RECORDERS:
        rec.append(report)


def reports(model) -> list[GraphReport]:
    """The reports of every graph vtp compiled for ``model`` (the module, its compiled wrapper,
    or a module whose ``compile()`` was called), in compile order."""
    found = {id(r): r for p in _parameters(model) for r in _BY_PARAMETER.get(id(p), ())}
    return sorted(found.values(), key=lambda r: r.seq)


@contextlib.contextmanager
def recording(into: list | None = None) -> Iterator[list[GraphReport]]:
    """``with vtp_compile.recording() as reps: ...``: the reports of every graph vtp compiles
    inside the block, in order (any model); appended to ``into`` when given."""
    rec: list[GraphReport] = [] if into is None else into
    _RECORDERS.append(rec)
    try:
        yield rec
    finally:
        _RECORDERS[:] = [r for r in _RECORDERS if r is not rec]


def _parameters(model) -> list:
    orig = getattr(model, "_orig_mod", model)
    if isinstance(orig, torch.nn.Module):
        return list(orig.parameters())
    return []


def _first_parameter(gm, example_inputs):
    for x in example_inputs:
        if isinstance(x, torch.nn.Parameter):
            return x
    for p in gm.parameters():
        return p
    return None
