"""Compile a fresh copy of a model for one benchmark configuration.

``method="none"`` means unpruned: ``model.compile(backend="inductor")`` (or eager with
``compile_unpruned=False``). Any other method compiles with the ``vtp`` backend::

    model.compile(backend="vtp", options={"method": m, "budget": b})   # or {"ratio": r}

Each configuration gets a deep copy of the base model and a ``torch._dynamo.reset()`` so
compiled graphs never leak between configurations.
"""

from __future__ import annotations

import json

import copy

import torch

NONE_METHOD = "none"
RECOMPILE_LIMIT = 64


class BackendUnavailableError(RuntimeError):
    """The ``vtp`` torch.compile backend could not be found or imported."""


class ExplainUnavailableError(RuntimeError):
    """``vtp_compile.explain`` could not be imported (raised by :func:`.show.get_explain`)."""


def known_methods() -> list[str] | None:
    """Method names the installed backend registers (plus ``"none"``), or None if unknown."""
    try:
        from vtp_compile import available_methods
        return [NONE_METHOD] + [m for m in available_methods() if m != NONE_METHOD]
    except (ImportError, AttributeError):
        return None


def _split_top(text: str, sep: str = ",") -> list[str]:
    """``text`` split at ``sep`` outside brackets, braces and double quotes."""
    out, depth, quoted, cur = [], 0, False, ""
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "[{":
            depth += 1
        elif not quoted and ch in "]}":
            depth -= 1
        if ch == sep and depth == 0 and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def _value(raw: str):
    """An option value: JSON (numbers, true/false/null, lists, objects, quoted strings), else the
    bare string."""
    try:
        return json.loads(raw)
    except ValueError:
        return {"True": True, "False": False, "None": None}.get(raw, raw)


def _render(value) -> str:
    if isinstance(value, str) and value and all(c.isalnum() or c in "_-." for c in value):
        return value
    return json.dumps(value, separators=(",", ":"))


def method_label(name: str, options: dict) -> str:
    """The canonical label of a method with options: ``name`` or ``name:key=value,...``."""
    if not options:
        return name
    return name + ":" + ",".join(f"{k}={_render(v)}" for k, v in options.items())


def parse_method_spec(spec) -> tuple[str, dict]:
    """``"dstp:reserve=64,tau=0.1"``, ``'{"method": "dstp", "reserve": 64}'`` or a dict ->
    ``(name, options)``. Options are the method's own (not ``budget``/``ratio``, which the
    sweep's budgets set)."""
    if isinstance(spec, str) and spec.strip().startswith("{"):
        try:
            spec = json.loads(spec)
        except ValueError as e:
            raise ValueError(f"method spec {spec!r} is not valid JSON: {e}") from None
    if isinstance(spec, dict):
        opts = dict(spec)
        name = opts.pop("method", None)
        if not isinstance(name, str):
            raise ValueError(f"method spec {spec!r} needs a \"method\" name")
    else:
        name, _, rest = str(spec).strip().partition(":")
        opts = {}
        for item in (_split_top(rest) if rest.strip() else []):
            key, eq, raw = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"method option {item!r} in {spec!r} is not key=value")
            opts[key.strip()] = _value(raw.strip())
    bad = {"budget", "ratio"} & set(opts)
    if bad:
        raise ValueError(f"method spec {spec!r} sets {sorted(bad)}; budgets come from --budgets")
    return name.strip(), opts


def parse_methods(spec: str | list) -> list[str]:
    """Method specs -> canonical labels (``name`` or ``name:key=value,...``).

    ``spec``: a comma list where each method may carry options after a colon, e.g.
    ``none,fastv,dstp:reserve=64,tau=0.1`` (a ``key=value`` item without a colon belongs to the
    method before it; values are JSON where they parse, e.g. ``layers=[8,16,24]``), a JSON list
    of names / objects, or one JSON object. Unknown methods raise ``ValueError`` listing the
    valid names.
    """
    if isinstance(spec, str) and spec.strip().startswith("["):
        try:
            spec = json.loads(spec)
        except ValueError as e:
            raise ValueError(f"--methods {spec!r} is not valid JSON: {e}") from None
    if isinstance(spec, str) and spec.strip().startswith("{"):
        items = [spec]
    elif isinstance(spec, str):
        items = []
        for piece in _split_top(spec):
            piece = piece.strip()
            if not piece:
                continue
            if "=" in piece and ":" not in piece.split("=")[0] and items and ":" in items[-1]:
                items[-1] += "," + piece           # another option of the method before
            else:
                items.append(piece)
    else:
        items = list(spec)
    labels = [method_label(*parse_method_spec(it)) for it in items]
    if not labels:
        raise ValueError("no methods given; use e.g. --methods none,random,fastv")
    valid = known_methods()
    if valid is not None:
        bad = [m for m in labels if parse_method_spec(m)[0] not in valid]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; valid methods: {', '.join(valid)}")
    return labels


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
    """The backend ``options`` dict for one configuration (``method``: a name or a label with
    options, see :func:`parse_methods`); a method that takes no budget of its own (a chain)
    ignores ``budget``."""
    name, opts = parse_method_spec(method)
    out = {"method": name, **opts}
    try:
        from ..methods.registry import get_method
        takes = get_method(name).takes_budget
    except Exception:
        takes = True
    if takes and budget is not None:
        out["ratio" if isinstance(budget, float) else "budget"] = budget
    return out


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
    from ..config import PruneConfig
    from ..methods.registry import get_method
    options = prune_options(method, budget)
    cfg = PruneConfig.from_options(options)
    if get_method(options["method"]).needs_vision(cfg):
        from ..vision_context import attach
        attach(model, cfg.params.get("vision_layer"))
    model.compile(backend=vtp_backend(), options=options)
    return model
