"""vtp_compile: a torch.compile backend that prunes visual tokens inside compiled VLM graphs.

    model = torch.compile(model, backend="vtp", options={"method": "fastv", "budget": 64})

Importing this package never initialises CUDA nor imports triton.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["PruneConfig", "OptionError", "PassError", "attach", "detach", "explain",
           "available_methods", "configure_dynamo", "frame_tokens", "reports", "recording", "__version__"]


def configure_dynamo(recompile_limit: int = 64, capture_scalar_outputs: bool = True,
                     capture_dynamic_output_shape_ops: bool | None = None) -> dict:
    """Set the Dynamo options a pruned VLM needs; returns the previous values.

    * ``capture_scalar_outputs``: transformers' placeholder-count check calls ``.item()``;
      without it Dynamo splits the prefill there and prints a graph-break warning.
    * ``recompile_limit``: prefill/decode x padded/unpadded x static/dynamic graphs exceed
      Dynamo's default of 8, after which it silently runs the model eagerly, unpruned.
    * ``capture_dynamic_output_shape_ops`` (left as it is unless given): Qwen3-VL's ``generate``
      needs it (its deepstack injection is a boolean-mask write; without it Dynamo splits every
      decoder layer there and vtp warns once that it runs unpruned). Its direct forward breaks
      inside Dynamo with it, so it is not on by default.

    Process-wide (these are ``torch._dynamo.config`` settings); undo with
    ``configure_dynamo(**previous)``.
    """
    import torch._dynamo
    cfg = torch._dynamo.config
    old = {"recompile_limit": cfg.recompile_limit, "capture_scalar_outputs": cfg.capture_scalar_outputs,
           "capture_dynamic_output_shape_ops": cfg.capture_dynamic_output_shape_ops}
    cfg.recompile_limit = recompile_limit
    cfg.capture_scalar_outputs = capture_scalar_outputs
    if capture_dynamic_output_shape_ops is not None:
        cfg.capture_dynamic_output_shape_ops = capture_dynamic_output_shape_ops
    return old


def explain(model, inputs, options=None):
    """What ``options`` would prune where for ``model(**inputs)``; see :mod:`vtp_compile.explanation`."""
    from .explanation import explain as _explain
    return _explain(model, inputs, options)


def attach(model, vision_layer: int | None = None):
    """Let encoder-stage methods (Nüwa, VisionZip) read the vision tower's internals (of vision
    layer ``vision_layer``; None: -2 on CLIP/SigLIP towers, the last block on Qwen towers); see
    :mod:`vtp_compile.vision_context`. Returns ``model``."""
    from .vision_context import attach as _attach
    return _attach(model, vision_layer)


def detach(model):
    """Remove what :func:`attach` installed. Returns ``model``."""
    from .vision_context import detach as _detach
    return _detach(model)


def frame_tokens(model):
    """The ``frame_tokens`` option for ``model`` (None: not needed); see :mod:`vtp_compile.video`."""
    from .video import frame_tokens as _frame_tokens
    return _frame_tokens(model)


def __getattr__(name):  # lazy: keep `import vtp_compile` cheap
    if name == "OptionError":
        from .errors import OptionError
        return OptionError
    if name == "PassError":
        from .errors import PassError
        return PassError
    if name in ("reports", "recording"):
        from . import report
        return getattr(report, name)
    if name == "PruneConfig":
        from .config import PruneConfig
        return PruneConfig
    if name == "available_methods":
        from .methods.registry import method_names
        return method_names
    raise AttributeError(name)
