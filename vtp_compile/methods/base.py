"""The method interface: a method is policy. It turns a config into sites; passes do the rest."""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

from ..config import PruneConfig
from ..errors import OptionError


class Method:
    """Subclass, set the class attributes, implement :meth:`sites`, and register.

    ``defaults`` lists every method-specific option with its default value; the config rejects
    keys not listed there. :meth:`validate` checks values that do not need the model.
    """
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    paper: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}
    # reads the vision tower's internals: needs vtp_compile.attach(model) (see vision_context)
    vision_internals: ClassVar[bool] = False
    # why a CUDA graph cannot replay this method's graphs (None: it can); refuses reduce-overhead
    no_cuda_graphs: ClassVar[str | None] = None
    # False: the config's own budget/ratio is meaningless (chains: each stage has its own)
    takes_budget: ClassVar[bool] = True

    def validate(self, params: Mapping[str, Any]) -> None:
        pass

    def sites(self, cfg: PruneConfig, num_layers: int) -> list:
        raise NotImplementedError

    def needs_vision(self, cfg: PruneConfig) -> bool:
        """Whether this config reads the vision tower's internals (needs ``attach``)."""
        return self.vision_internals


def check_int(params, key, lo=None):
    v = params[key]
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
        raise OptionError(f"vtp: option {key!r} must be an int >= {lo}, got {v!r}")
