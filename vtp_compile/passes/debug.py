"""What to attach to a bug report: every pass's graph before and after it ran.

* ``VTP_DUMP_DIR=/some/dir`` (environment): each graph vtp compiles gets a folder
  ``/some/dir/<n>-<phase>/`` with ``<k>-<pass>.before.py`` / ``.after.py`` (the readable FX
  code, shapes in comments) and ``report.json`` (sites, KV layouts, nodes each pass inserted).
* ``TORCH_TRACE=/some/dir`` (torch's structured trace, read by ``tlparse``): the same graphs as
  artifacts named ``vtp_<phase>_<pass>_<before|after>``, beside Dynamo's and Inductor's.

Neither changes the code vtp generates.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path

import torch.fx as fx
from torch._logging import trace_structured

ENV = "VTP_DUMP_DIR"
_GRAPHS = itertools.count()


class Dump:
    def __init__(self, phase: str, folder: Path | None):
        self.phase, self.folder, self._k = phase, folder, 0

    @classmethod
    def open(cls, phase: str) -> "Dump":
        root = os.environ.get(ENV)
        folder = None
        if root:
            folder = Path(root) / f"{next(_GRAPHS):03d}-{phase}"
            folder.mkdir(parents=True, exist_ok=True)
        return cls(phase, folder)

    def write(self, pass_name: str, when: str, gm: fx.GraphModule) -> None:
        trace_structured("artifact", metadata_fn=lambda: {
            "name": f"vtp_{self.phase}_{pass_name}_{when}", "encoding": "string"},
            payload_fn=lambda: _readable(gm))
        if self.folder is None:
            return
        if when == "before":
            self._k += 1
        (self.folder / f"{self._k:02d}-{pass_name}.{when}.py").write_text(_readable(gm))

    def finish(self, report) -> None:
        if self.folder is not None:
            (self.folder / "report.json").write_text(json.dumps(dataclasses.asdict(report), indent=1))


def _readable(gm: fx.GraphModule) -> str:
    gm.recompile()
    return gm.print_readable(print_output=False, include_stride=False, include_device=True)
