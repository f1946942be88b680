"""Typed method options: one small frozen dataclass per method, validated when built.

A method's options class (``@method_options``) lists every option the method takes, with its type, default and a
one-line meaning (``opt(default, "meaning")``); ``__post_init__`` runs :meth:`MethodOptions.check`,
which raises :class:`~vtp_compile.errors.OptionError` naming what is valid. The config builds it
from the user's ``options`` dict (:meth:`vtp_compile.config.PruneConfig.from_options`), so a
bad value fails before anything is traced. An instance reads as attributes (``p.layer``) or as a
mapping (``p["layer"]``, ``dict(p)``). The README's options table is generated from these
classes (``python -m vtp_compile.options_table``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Iterator

from ..errors import OptionError


def method_options(cls):
    """Class decorator for a method's options: a frozen dataclass that compares as a mapping
    (so ``cfg.params == {"layer": 2}`` holds)."""
    return dataclasses.dataclass(frozen=True, eq=False)(cls)


def opt(default: Any, doc: str) -> Any:
    """A method option: its default and what it means (for the options table)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True, eq=False)
class MethodOptions(Mapping):
    """Base class: subclass with ``@method_options``, ``opt`` fields and :meth:`check`."""

    def __post_init__(self) -> None:
        self.check()

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __hash__(self) -> int:
        return hash(repr(sorted(self.items())))

    def check(self) -> None:
        """Raise :class:`OptionError` for a bad value (no model needed)."""

    # ---- the mapping view -----------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key not in self.names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def table(cls) -> list[tuple[str, str, Any, str]]:
        """``(name, type, default, meaning)`` per option."""
        return [(f.name, str(f.type), f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)]

    # ---- checks ---------------------------------------------------------------------------------
    def check_int(self, key: str, lo: int | None = None, optional: bool = False) -> None:
        v = self[key]
        if optional and v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
            bound = "" if lo is None else f" >= {lo}"
            raise OptionError(f"vtp: option {key!r} must be an int{bound}"
                              + (" or None" if optional else "") + f", got {v!r}")

    def check_number(self, key: str, lo: float, hi: float, low_open: bool = False,
                     high_open: bool = False) -> None:
        v = self[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = ok and (lo < v if low_open else lo <= v) and (v < hi if high_open else v <= hi)
        if not ok:
            if hi == float("inf"):
                rng = f"{'>' if low_open else '>='} {lo:g}"
            else:
                rng = f"in {'(' if low_open else '['}{lo:g}, {hi:g}{')' if high_open else ']'}"
            raise OptionError(f"vtp: option {key!r} must be a number {rng}, got {v!r}")

    def check_choice(self, key: str, choices) -> None:
        if self[key] not in choices:
            raise OptionError(f"vtp: option {key!r} must be one of {list(choices)}, got {self[key]!r}")

    def check_bool(self, key: str) -> None:
        if not isinstance(self[key], bool):
            raise OptionError(f"vtp: option {key!r} must be True or False, got {self[key]!r}")

    def check_layers(self, key: str, most: int | None = None, what: str = "decoder layer indices") -> None:
        """None, or a strictly increasing list of 1..``most`` ints >= 0."""
        v = self[key]
        if v is None:
            return
        ok = (isinstance(v, (list, tuple)) and len(v) >= 1 and (most is None or len(v) <= most)
              and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
              and list(v) == sorted(set(v)))
        if not ok:
            n = f"1-{most} " if most else ""
            raise OptionError(f"vtp: option {key!r} must be a strictly increasing list of {n}{what} "
                              f">= 0, got {v!r}")


@method_options
class NoOptions(MethodOptions):
    """A method without options of its own."""
