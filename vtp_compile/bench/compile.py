"""Compile a fresh copy of a model for one benchmark configuration.

``method="none"`` means unpruned: ``model.compile(backend="inductor")`` (or eager with
``compile_unpruned=False``). Any other method compiles with the ``vtp`` backend::

    model.compile(backend="vtp", options={"method": m, "budget": b})   # or {"ratio": r}

Each configuration gets a deep copy of the base model and a ``torch._dynamo.reset()`` so
compiled graphs never leak between configurations.
"""

from __future__ import annotations

import copy

import torch

NONE_METHOD = "none"
RECOMPILE_LIMIT = 64


class BackendUnavailableError(RuntimeError):
    """The ``vtp`` torch.compile backend could not be found or imported."""


def known_methods() -> list[str] | None:
    """Method names the installed backend registers (plus ``"none"``), or None if unknown."""
    try:
        from vtp_compile import available_methods
        return [NONE_METHOD] + [m for m in available_methods() if m != NONE_METHOD]
    except (ImportError, AttributeError):
        return None


def parse_methods(spec: str | list[str]) -> list[str]:
    """Comma list of method names; unknown ones raise ``ValueError`` listing the valid names."""
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    if not names:
        raise ValueError("no methods given; use e.g. --methods none,random,fastv")
    valid = known_methods()
    if valid is not None:
        bad = [m for m in names if m not in valid]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; valid methods: {', '.join(valid)}")
    return names


def parse_budgets(spec: str | list) -> list[int | float]:
    """``"12,25,49"`` -> token counts; values in (0, 1) are kept-ratios, e.g. ``"0.25"``."""
    out: list[int | float] = []
    for raw in (spec.split(",") if isinstance(spec, str) else spec):
        raw = str(raw).strip()
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"budget {raw!r} is neither a token count nor a ratio") from None
        if value <= 0:
            raise ValueError(f"budget {raw!r} must be positive")
        if value < 1:
            out.append(value)
        elif value == int(value):
            out.append(int(value))
        else:
            raise ValueError(f"budget {raw!r}: counts are integers, ratios lie in (0, 1)")
    if not out:
        raise ValueError("no budgets given; use e.g. --budgets 12,25,49 or 0.1,0.25")
    return out


def prune_options(method: str, budget: int | float) -> dict:
    """The backend ``options`` dict for one configuration."""
    key = "ratio" if isinstance(budget, float) else "budget"
    return {"method": method, key: budget}


def vtp_backend():
    """The ``vtp`` backend: by name if registered (entry point), else imported directly.

    Raises :class:`BackendUnavailableError` explaining how to make it available.
    """
    from torch._dynamo.backends.registry import lookup_backend

    try:
        return lookup_backend("vtp")
    except Exception as lookup_err:  # InvalidBackend, or an import error inside the entry point
        try:
            from vtp_compile.backend import vtp_backend as fn
            return fn
        except Exception as import_err:
            raise BackendUnavailableError(
                "the 'vtp' torch.compile backend is not available "
                f"(lookup: {lookup_err}; import vtp_compile.backend: {import_err!r}). "
                "Install the package (pip install -e .) so the torch_dynamo_backends entry "
                "point registers it, or use --methods none.") from import_err


def compiled_copy(base_model, method: str, budget: int | float | None = None,
                  compile_unpruned: bool = True):
    """A deep copy of ``base_model`` compiled for ``method`` (and ``budget`` unless 'none')."""
    torch._dynamo.reset()
    # one prefill graph (no .item() graph break) and enough cache entries for prefill/decode x
    # padded/unpadded x static/dynamic graphs; past the limit Dynamo runs the frame eagerly
    from .. import configure_dynamo
    configure_dynamo(max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT))
    model = copy.deepcopy(base_model).eval()
    if method == NONE_METHOD:
        if compile_unpruned:
            model.compile(backend="inductor")
        return model
    if budget is None:
        raise ValueError(f"method {method!r} needs a budget")
    from ..methods.registry import get_method
    if get_method(method).vision_internals:
        from ..vision_context import attach
        attach(model)
    model.compile(backend=vtp_backend(), options=prune_options(method, budget))
    return model
