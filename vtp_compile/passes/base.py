"""The pass protocol: what every vtp graph pass is, and what it works on.

A pass is an object with a ``name``, a :meth:`~GraphPass.cache_key` (changes when its code
does), :meth:`~GraphPass.applies` (whether it has work on this graph) and a call that edits
``ctx.gm`` in place. :class:`~vtp_compile.passes.manager.PassManager` only orders passes, runs
the ones that apply, and reports the nodes each one inserted.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import sys
from typing import Any, ClassVar

import torch.fx as fx

from ..config import PruneConfig
from ..graph.vlm_graph import VLMGraph
from ..report import GraphReport
from .kv import Layouts


@dataclasses.dataclass
class PassContext:
    """One graph as the passes see it."""
    gm: fx.GraphModule            # the working copy the passes edit
    vlm: VLMGraph                 # its analysis (phase, layers, splice)
    layouts: Layouts              # each layer's KV layout
    cfg: PruneConfig
    sites: list                   # the method's sites for this model's depth
    example_inputs: list
    report: GraphReport
    key: str                      # runtime state key of this configuration (DSTP)
    state: Any = None             # CompactState of a prefill (compact.py)
    accounting: Any = None        # Accounting of a prefill (accounting.py)


class GraphPass:
    """Subclass: set ``name`` and ``phases``, implement ``__call__``; override :meth:`applies`
    when the pass has work only on some graphs of its phases."""
    name: ClassVar[str]
    phases: ClassVar[tuple[str, ...]] = ("prefill",)

    def applies(self, ctx: PassContext) -> bool:
        return ctx.vlm.phase in self.phases

    def __call__(self, ctx: PassContext) -> None:
        raise NotImplementedError

    def cache_key(self) -> str:
        """A hash of the code that defines the pass (its module's source)."""
        return hashlib.sha256(f"{self.name}\n{_source(type(self).__module__)}".encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


@functools.lru_cache(maxsize=None)
def _source(module: str) -> str:
    return inspect.getsource(sys.modules[module])
