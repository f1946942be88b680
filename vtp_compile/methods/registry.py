"""Name -> method. Importing a method module registers it."""
from __future__ import annotations

from .base import Method
from ..errors import OptionError

_METHODS: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}
# methods on the roadmap (METHODS.md) that are not implemented yet: a clear error, not a guess
PLANNED: tuple[str, ...] = ()


def register(cls):
    inst = cls()
    _METHODS[cls.name] = inst
    for a in cls.aliases:
        _ALIASES[a] = cls.name
    return cls


def _load():
    from . import (alvts, cdpruner, chain, dart, dcp, divprune, dstp, dycoke, fastv, fastvid,  # noqa: F401
                   nuwa, pdrop, random_select, sparsevlm, vidcom2, visionzip)


def method_names() -> list[str]:
    _load()
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    _load()
    key = _ALIASES.get(name, name)
    if key not in _METHODS and key in PLANNED:
        raise OptionError(f"vtp: method {name!r} is not implemented yet; available: "
                         f"{sorted(_METHODS)}")
    if key not in _METHODS:
        raise OptionError(f"vtp: unknown method {name!r}; available: {sorted(_METHODS)}"
                         + (f" (aliases: {sorted(_ALIASES)})" if _ALIASES else ""))
    return _METHODS[key]
