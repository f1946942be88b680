"""A ``vtp`` option on a model the plugin has no adapter for is an error, not a silent no-op.

vLLM hands every ``mm_processor_kwargs`` entry to the model's multimodal processor, and a
processor that does not know ``vtp`` ignores it: without this guard, ``vtp`` options on a model
the plugin has no adapter for (a pooling model on vLLM's Transformers backend, Qwen3.5, ...)
would run unpruned without a word.
:func:`install` wraps vLLM's ``MultiModalRegistry.create_processor`` (every vLLM process builds
its processor through it, at start-up: the front end for requests, the engine core for its
encoder budget): a processor without vtp's mixin

- fails at once if the engine-wide ``mm_processor_kwargs`` hold ``vtp`` (a start-up error), and
- refuses each request whose own ``mm_processor_kwargs`` hold ``vtp``;

both with :class:`~vtp_compile.errors.OptionError` (a ``ValueError``) naming the model's class
and the families that prune (:data:`.plugin.FAMILIES`). Models with an adapter are untouched.
"""
from __future__ import annotations

import functools

from . import options

_ATTR = "_vtp_guarded"


def adapted_families() -> str:
    from .plugin import FAMILIES
    return ", ".join(f"{fam} ({arch})" for arch, fam in FAMILIES.items())


def refusal(cls_name: str, processor) -> Exception:
    from ...errors import OptionError
    return OptionError(
        f"vtp: the 'vtp' option was given, but the vtp plugin has no adapter for vLLM's "
        f"{cls_name} (processor {type(processor).__name__}), so it cannot prune this model; "
        f"remove the option to run it unpruned. Families the plugin prunes: {adapted_families()}")


def _has_vtp(kwargs) -> bool:
    return bool(kwargs) and kwargs.get(options.KEY) is not None


def guard(processor, model_config, cls_name: str):
    """Make ``processor`` (not vtp's) of vLLM's model class ``cls_name`` refuse ``vtp``
    options; return it."""
    mm = getattr(model_config, "multimodal_config", None)
    if _has_vtp(getattr(mm, "mm_processor_kwargs", None)):
        options.from_mm_kwargs(mm.mm_processor_kwargs)      # a bad option: its own error first
        raise refusal(cls_name, processor)
    apply = processor.apply

    @functools.wraps(apply)
    def guarded_apply(inputs, *args, **kwargs):
        if _has_vtp(getattr(inputs, "hf_processor_mm_kwargs", None)):
            raise refusal(cls_name, processor)
        return apply(inputs, *args, **kwargs)
    processor.apply = guarded_apply
    return processor


def install() -> None:
    """Wrap ``MultiModalRegistry.create_processor`` once per process."""
    from vllm.multimodal.registry import MultiModalRegistry

    from .processor import PruningProcessorMixin
    create = MultiModalRegistry.create_processor
    if getattr(create, _ATTR, False):
        return

    @functools.wraps(create)
    def create_processor(self, model_config, *args, **kwargs):
        processor = create(self, model_config, *args, **kwargs)
        if isinstance(processor, PruningProcessorMixin):
            return processor
        return guard(processor, model_config, type(self)._get_model_cls(self, model_config).__name__)
    setattr(create_processor, _ATTR, True)
    MultiModalRegistry.create_processor = create_processor
