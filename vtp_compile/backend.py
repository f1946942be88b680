"""The ``vtp`` torch.compile backend: config -> analyse -> plan -> rewrite -> lower.

Errors keep their kind: a bad option raises :class:`~vtp_compile.errors.OptionError` (a
``ValueError``) when the options are validated, or when a model-dependent check fails (a layer
beyond the model's depth); a graph vtp cannot rewrite safely is compiled unpruned with one log
line why; anything else raised inside a pass is a bug in vtp and says so
(:class:`~vtp_compile.errors.PassError`).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.fx as fx

from . import kernels  # noqa: F401  (registers torch.ops.vtp)
from .config import PruneConfig
from .errors import OptionError, PassError
from .graph.fx_utils import StaticCacheUnsupported, Unsupported
from .graph.traced_model import traced_config
from .inner import lower
from .passes.manager import PassManager
from .report import GraphReport, file_report
from .video import with_frame_tokens

log = logging.getLogger("vtp_compile")
_env_level = os.environ.get("VTP_LOG")
if _env_level:
    log.setLevel(_env_level.upper())
    if not log.handlers:
        _h = logging.StreamHandler()
        _h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(_h)


def vtp_backend(gm: fx.GraphModule, example_inputs: list, **kwargs: Any):
    """Entry point registered as ``backend="vtp"`` (see ``pyproject.toml``)."""
    options = dict(kwargs.get("options") or {})
    if kwargs.get("mode") not in (None, "default"):
        # torch.compile(model, backend="vtp", mode=...) without options: the same as options["mode"]
        options.setdefault("mode", kwargs["mode"])
    cfg = PruneConfig.from_options(options)      # OptionError: a bad option
    cfg = with_frame_tokens(cfg, traced_config())  # LLaVA-OneVision / NeXT-Video clips
    manager = PassManager(cfg)
    try:
        gm, report = manager(gm, example_inputs)
    except StaticCacheUnsupported as why:
        _warn_static_cache(why)
        report = GraphReport("unrecognised", skipped=str(why))
    except Unsupported as why:
        log.info("vtp: graph left unpruned: %s", why)
        report = GraphReport("unrecognised", skipped=str(why))
        _warn_dynamo_split()
    except OptionError:
        raise       # a model-dependent option check (a layer beyond the model's depth)
    except Exception as e:
        raise PassError(manager.current, e) from e
    file_report(report, gm, example_inputs)
    _warn_recompile_limit()
    compiled = lower(gm, example_inputs, cfg)
    return compiled if report.skipped is None else _refuse_marked_caches(compiled, example_inputs, report.skipped)


def _refuse_marked_caches(compiled, example_inputs, why: str):
    """A graph left unpruned must not read a cache a pruned prefill left (dead slots marked,
    :mod:`vtp_compile.kernels.cache`): its masks would attend to the dead slots, a silent wrong
    answer. Such a graph (a decode step vtp could not rewrite after a prefill it did) raises
    instead. The check is ``torch._assert_async`` on the cache-shaped inputs: no host read."""
    from .kernels.cache import dead_columns
    idx = [i for i, x in enumerate(example_inputs)
           if isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point() and x.shape[-1] >= 2]
    if not idx:
        return compiled
    msg = (f"vtp: a cache that a pruned prefill left reached a graph vtp could not rewrite ({why}); "
           "its attention would read the removed tokens' slots. Compile the whole model with vtp, "
           "or the whole generation without it")

    def run(*args):
        for i in idx:
            comp, pos = dead_columns(args[i])
            torch._assert_async(~(comp.any() | pos.any()), msg)
        return compiled(*args)
    return run


_warned_limit = False
_warned_static = False

# Dynamo graph breaks (torch._dynamo.utils.counters["graph_break"], keyed by the break's message)
# that a Dynamo setting removes, by a phrase of that message: the graph pieces around such a break
# hold no whole decoder (Qwen3-VL's deepstack injection without capture_dynamic_output_shape_ops),
# so vtp leaves them unpruned
_SPLITS = {"capture_dynamic_output_shape_ops = True": "capture_dynamic_output_shape_ops",
           "capture_scalar_outputs=False": "capture_scalar_outputs"}
_breaks_seen: dict[str, int] = {}
_warned_settings: set[str] = set()


def _warn_dynamo_split() -> None:
    """A graph left unpruned right after Dynamo split the model at a break that a Dynamo setting
    removes: one WARNING per setting naming it (the INFO line alone is easy to miss)."""
    from torch._dynamo.utils import counters
    breaks = counters["graph_break"]
    for phrase, setting in _SPLITS.items():
        seen = sum(n for msg, n in breaks.items() if phrase in msg)
        new = seen > _breaks_seen.get(setting, 0)
        _breaks_seen[setting] = seen
        if new and setting not in _warned_settings and not getattr(torch._dynamo.config, setting):
            _warned_settings.add(setting)
            log.warning("vtp: Dynamo split the model's graph at a break that "
                        "torch._dynamo.config.%s = True removes; the pieces hold no whole decoder "
                        "and run unpruned. Set it (vtp_compile.configure_dynamo(%s=True)) before "
                        "compiling.", setting, setting)


def _warn_static_cache(why) -> None:
    """One warning per process (every prefill and decode graph of a static-cache generate
    lands here); later graphs log at info level."""
    global _warned_static
    if not _warned_static:
        _warned_static = True
        log.warning("vtp: generation left unpruned: %s", why)
    else:
        log.info("vtp: graph left unpruned: %s", why)


def _warn_recompile_limit() -> None:
    global _warned_limit
    limit = torch._dynamo.config.recompile_limit
    if limit < 32 and not _warned_limit:
        _warned_limit = True
        log.warning("vtp: torch._dynamo.config.recompile_limit is %d; prefill/decode x padded/"
                    "unpadded x static/dynamic graphs can exceed it, after which Dynamo runs "
                    "the model eagerly and unpruned. Call vtp_compile.configure_dynamo() (or set "
                    "it to 64).", limit)


def register_if_needed() -> None:
    """Register the backend by hand when the entry point is absent (uninstalled source tree)."""
    from torch._dynamo.backends.registry import _BACKENDS, register_backend
    try:
        from torch._dynamo.backends.registry import list_backends
        names = list_backends(exclude_tags=())
    except Exception:  # pragma: no cover
        names = list(_BACKENDS)
    if "vtp" not in names:
        register_backend(vtp_backend, name="vtp")
