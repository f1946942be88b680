"""One Dynamo trace, several vtp configurations.

Tracing transformers' modeling code is ~95% of a tiny model's compile, vtp's passes a few
percent. To compare several configurations (methods, budgets) on one model, :class:`Multiplex`
is a ``torch.compile`` backend that hands every graph Dynamo captures to the ``vtp`` backend once
per configuration (each on its own copy of the graph, exactly as ``backend="vtp",
options=config`` would receive it) and runs the configuration selected with :meth:`select`.
Dynamo's guards do not depend on the backend, so one trace serves every configuration.

    mux = Multiplex({"fastv": {"method": "fastv", "budget": 3}, "keep": {"method": "fastv", "budget": 10**6}})
    model.compile(backend=mux)
    with mux.select("fastv"):
        out = model.generate(**inputs)
    mux.reports["fastv"]          # that configuration's GraphReports (what each graph pruned)

Used by the family tests (every method on every family from one trace per family).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch.fx as fx

from ..backend import vtp_backend
from ..report import GraphReport, recording


class Multiplex:
    """A backend: ``configs`` maps a name to vtp options; :meth:`select` picks the one that runs."""

    def __init__(self, configs: dict[str, dict[str, Any]]):
        self.configs = dict(configs)
        self.reports: dict[str, list[GraphReport]] = {name: [] for name in self.configs}
        self.graphs = 0
        self._current: str | None = None

    def __call__(self, gm: fx.GraphModule, example_inputs: list):
        self.graphs += 1
        compiled = {}
        for name, options in self.configs.items():
            with recording() as reps:
                compiled[name] = vtp_backend(copy.deepcopy(gm), example_inputs, options=options)
            self.reports[name] += reps

        def run(*args):
            if self._current is None:
                raise RuntimeError("Multiplex: call inside `with mux.select(name):`; configurations: "
                                   + ", ".join(self.configs))
            return compiled[self._current](*args)
        return run

    @contextlib.contextmanager
    def select(self, name: str) -> Iterator[None]:
        if name not in self.configs:
            raise ValueError(f"unknown configuration {name!r}; configured: {', '.join(self.configs)}")
        before, self._current = self._current, name
        try:
            yield
        finally:
            self._current = before
