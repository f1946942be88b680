"""vtp_compile: a torch.compile backend that prunes visual tokens inside compiled VLM graphs.

    model = torch.compile(model, backend="vtp", options={"method": "fastv", "budget": 64})

Importing this package never initialises CUDA nor imports triton.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["PruneConfig", "attach", "detach", "explain", "available_methods", "__version__"]


def explain(model, inputs, options=None):
    """What ``options`` would prune where for ``model(**inputs)``; see :mod:`vtp_compile.explanation`."""
    from .explanation import explain as _explain
    return _explain(model, inputs, options)


def attach(model):
    """Let encoder-stage methods (Nüwa) read the vision tower's internals; see
    :mod:`vtp_compile.vision_context`. Returns ``model``."""
    from .vision_context import attach as _attach
    return _attach(model)


def detach(model):
    """Remove what :func:`attach` installed. Returns ``model``."""
    from .vision_context import detach as _detach
    return _detach(model)


def __getattr__(name):  # lazy: keep `import vtp_compile` cheap
    if name == "PruneConfig":
        from .config import PruneConfig
        return PruneConfig
    if name == "available_methods":
        from .methods.registry import method_names
        return method_names
    raise AttributeError(name)
