"""``PruneConfig``: the validated form of ``torch.compile(..., options={...})``."""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any, Callable, Mapping, Union

from .errors import OptionError

COMMON_KEYS = ("method", "budget", "ratio", "per_frame", "min_per_frame", "frame_tokens", "mode",
               "inner_backend", "inductor_config")
# option keys accepted under an older name: alias -> key
ALIASES = {"inductor": "inductor_config"}
# what each common option means (the README's options table: python -m vtp_compile.options_table)
COMMON_DOCS = {
    "method": ("str", "fastv", "one of `vtp_compile.available_methods()`"),
    "budget": ("int", None, "visual tokens kept per sample (all images of a prompt together)"),
    "ratio": ("float", "1/9 if neither is given", "fraction of visual tokens kept, rounded up with integer arithmetic"),
    "per_frame": ("str", "off", "how a row's budget is spread over its frames (an image is one frame; "
                  "see docs/video.md): `off` (one ranking over all of them), `even` (each frame keeps "
                  "the same share of its tokens), `unique` (frames unlike the clip keep more, as VidCom2)"),
    "min_per_frame": ("int", 1, "with `per_frame`: tokens every frame keeps before the rest is spread "
                      "(0: a frame may be emptied)"),
    "frame_tokens": ("int", "from the model's config", "tokens per frame where a clip reaches the language "
                     "model as one run with one-dimensional positions (LLaVA-OneVision, LLaVA-NeXT-Video): "
                     "read from the compiled model's config, as `vtp_compile.frame_tokens(model)`; "
                     "give it to override"),
    "mode": ("str", "default", "an Inductor mode: `default`, `reduce-overhead`, `max-autotune`, "
             "`max-autotune-no-cudagraphs` (torch.compile refuses `mode=` next to `options=`)"),
    "inner_backend": ("str or callable", "inductor", "what compiles the rewritten graph: `inductor`, any "
                      "registered torch.compile backend name (`eager`, `aot_eager`, ...), or a callable "
                      "`(gm, example_inputs) -> callable`"),
    "inductor_config": ("dict", {}, "Inductor config patches passed through (applied after `mode`'s, "
                        "and over vtp's CPU defaults `vtp_compile.inner.CPU_DEFAULTS`); "
                        "`inductor` is accepted as an alias"),
}
# torch.compile's modes (it refuses `mode` together with `options`, so vtp takes it as an option)
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_RATIO = Fraction(1, 9)


PER_FRAME = ("off", "even", "unique")


@dataclasses.dataclass(frozen=True)
class FrameRule:
    """How a row's kept count is spread over its frames (kernels/frames.py): ``alloc`` "even"
    (weight: the frame's size), "unique" (size times the frame's uniqueness) or "off" (frames
    only located, for methods that read them); ``min_per_frame`` tokens first in every frame;
    ``frame_tokens`` > 0 cuts one-run clips into frames of that many tokens."""
    alloc: str = "off"
    min_per_frame: int = 1
    frame_tokens: int = 0

    def __str__(self) -> str:
        return f"per frame: {self.alloc}, at least {self.min_per_frame}"


@dataclasses.dataclass(frozen=True)
class KeepRule:
    """How many visual tokens (per image, per sample) a site keeps.

    Exactly one of ``budget`` (a count) or ``ratio`` (a fraction of the visual count, rounded
    up with integer arithmetic so that the kept count is a pure function of the visual count),
    or a ``schedule``: a function ``(n_visual, n_original) -> kept`` of each row's visual count at
    the site and its visual count before the first site (``[B]`` int64 tensors in the graph,
    plain ints for reports), for multi-stage methods whose stage counts depend on the original
    count (PDrop's layer-average budget). ``label`` names a schedule in reports.
    """
    budget: int | None = None
    ratio: Fraction | None = None
    schedule: Callable | None = None
    label: str = ""
    frames: FrameRule | None = None

    def count(self, n_visual, original=None):
        """Kept count for ``n_visual`` tokens (int or SymInt; ``original``: the row's visual
        count before the first site, for schedules); may exceed n_visual (= keep all)."""
        if self.schedule is not None:
            return int(self.schedule(n_visual, n_visual if original is None else original))
        if self.budget is not None:
            return self.budget
        return (n_visual * self.ratio.numerator + self.ratio.denominator - 1) // self.ratio.denominator

    def __str__(self) -> str:
        if self.schedule is not None:
            return self.label or getattr(self.schedule, "__name__", "schedule")
        out = f"budget={self.budget}" if self.budget is not None else f"ratio={float(self.ratio):.4g}"
        if self.frames is not None and self.frames.alloc != "off":
            out += f" ({self.frames})"
        return out


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """Validated backend options. Build with :meth:`from_options`."""
    method: str
    keep: KeepRule
    params: Mapping[str, Any]
    inner_backend: Union[str, Callable] = "inductor"
    inductor_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mode: str = "default"

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "PruneConfig":
        """Parse and validate; never mutates ``options``. Raises ``ValueError`` naming what is valid."""
        from .methods.registry import get_method, method_names

        opts = dict(options or {})
        for alias, key in ALIASES.items():
            if alias in opts:
                if key in opts:
                    raise OptionError(f"vtp: give {key!r} or its alias {alias!r}, not both")
                opts[key] = opts.pop(alias)
        name = opts.pop("method", "fastv")
        if not isinstance(name, str):
            raise OptionError(f"vtp: 'method' must be a string, one of {method_names()}")
        method = get_method(name)
        budget = opts.pop("budget", None)
        ratio = opts.pop("ratio", None)
        inner = _inner_backend(opts.pop("inner_backend", "inductor"))
        inductor = opts.pop("inductor_config", {}) or {}
        mode = opts.pop("mode", None) or "default"
        if not isinstance(inductor, Mapping):
            raise OptionError("vtp: 'inductor_config' must be a dict of Inductor config patches")
        if mode not in MODES:
            raise OptionError(f"vtp: unknown mode {mode!r}; valid: {list(MODES)}")
        if mode != "default" and inner != "inductor":
            raise OptionError(f"vtp: mode {mode!r} is an Inductor mode; it needs inner_backend "
                              f"'inductor', got {inner!r}")
        if not method.takes_budget and (budget is not None or ratio is not None):
            raise OptionError(f"vtp: method {method.name!r} takes no 'budget' or 'ratio' of its own "
                              "(each stage has its own)")
        keep = _keep_rule(budget, ratio)
        frames = _frame_rule(method, opts.pop("per_frame", None), opts.pop("min_per_frame", None),
                             opts.pop("frame_tokens", None))
        if frames is not None:
            keep = dataclasses.replace(keep, frames=frames)
        params = dict(method.defaults)
        unknown = [k for k in opts if k not in params]
        if unknown:
            raise OptionError(
                f"vtp: unknown option(s) {sorted(unknown)} for method {method.name!r}; valid "
                f"options: {sorted(list(COMMON_KEYS) + list(params))}")
        params.update(opts)
        params = method.options(**params)       # typed, validated (methods/options.py)
        refusal = method.cuda_graphs_refusal(params)
        if refusal and _cuda_graphs(mode, inductor):
            raise OptionError(f"vtp: method {method.name!r} cannot run under CUDA graphs "
                              f"(mode {mode!r}): {refusal}; use mode "
                              f"'max-autotune-no-cudagraphs' or 'default'")
        return cls(method=method.name, keep=keep, params=params, inner_backend=inner,
                   inductor_config=dict(inductor), mode=mode)


def _cuda_graphs(mode: str, inductor: Mapping[str, Any]) -> bool:
    """Whether Inductor would capture CUDA graphs under this mode and these patches."""
    import torch._inductor
    opts = dict(torch._inductor.list_mode_options(mode)) if mode != "default" else {}
    opts.update(inductor)
    return bool(opts.get("triton.cudagraphs"))


def _inner_backend(inner):
    """``inner_backend``: a registered torch.compile backend name or a callable
    ``(gm, example_inputs) -> callable`` (e.g. the backend an existing pipeline compiles with)."""
    if callable(inner):
        return inner
    from torch._dynamo import list_backends
    valid = sorted(set(list_backends(exclude_tags=())) | {"eager", "aot_eager", "inductor"} - {"vtp"})
    if not isinstance(inner, str) or inner not in valid:
        raise OptionError(f"vtp: unknown inner_backend {inner!r}; valid: a callable "
                          f"(gm, example_inputs) -> callable, or one of {valid}")
    return inner


def _keep_rule(budget, ratio) -> KeepRule:
    if budget is not None and ratio is not None:
        raise OptionError("vtp: give either 'budget' (tokens kept) or 'ratio' (fraction kept), not both")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise OptionError(f"vtp: 'budget' must be a positive int (visual tokens kept), got {budget!r}")
        return KeepRule(budget=budget)
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float, Fraction)) or not 0 < ratio <= 1:
            raise OptionError(f"vtp: 'ratio' must be a number in (0, 1], got {ratio!r}")
        return KeepRule(ratio=Fraction(ratio).limit_denominator(10_000))
    return KeepRule(ratio=DEFAULT_RATIO)


def _frame_rule(method, alloc, least, tokens) -> FrameRule | None:
    """The ``per_frame``/``min_per_frame``/``frame_tokens`` options (None: none given and the
    method reads no frames)."""
    from .methods.registry import get_method, method_names
    if alloc is None and least is None and tokens is None and not method.reads_frames:
        return None
    if not method.reads_frames and not method.per_frame_ok:
        ok = [n for n in method_names() if get_method(n).per_frame_ok or get_method(n).reads_frames]
        raise OptionError(f"vtp: method {method.name!r} does not rank every visual token, so frames "
                          "cannot reorder its choice ('per_frame', 'min_per_frame', 'frame_tokens'); "
                          f"methods that take them: {ok}")
    if alloc is None and not method.reads_frames:
        raise OptionError(f"vtp: 'min_per_frame' and 'frame_tokens' need 'per_frame' "
                          f"{list(PER_FRAME[1:])} with method {method.name!r}")
    if alloc is not None and method.own_frame_allocation:
        raise OptionError(f"vtp: {method.name} spreads its budget over frames itself "
                          f"({method.own_frame_allocation}); it takes 'min_per_frame' and "
                          "'frame_tokens' but not 'per_frame'")
    alloc = method.default_per_frame if alloc is None else alloc
    if alloc not in PER_FRAME:
        raise OptionError(f"vtp: 'per_frame' must be one of {list(PER_FRAME)}, got {alloc!r}")
    least = 1 if least is None else least
    if isinstance(least, bool) or not isinstance(least, int) or least < 0:
        raise OptionError(f"vtp: 'min_per_frame' must be an int >= 0, got {least!r}")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise OptionError(f"vtp: 'frame_tokens' must be a positive int (tokens per frame), got {tokens!r}")
    return FrameRule(alloc, least, tokens or 0)
