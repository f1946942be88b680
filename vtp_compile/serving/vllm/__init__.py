"""vLLM plugin: prune each image's visual tokens with vtp's encoder-site methods.

Switched on by ``mm_processor_kwargs={"vtp": {"method": ..., "budget" | "ratio": ..., ...}}``
(engine-wide, ``vllm serve --mm-processor-kwargs``, or per request); see docs/serving_vllm.md.
vLLM loads :func:`register` in every process through the ``vllm.general_plugins`` entry point.
Importing this module imports neither vLLM nor torch.

Files, one job each:

- :mod:`.options`   -- the ``vtp`` option dict: validate, refuse layer-site methods, encode;
- :mod:`.selection`    -- one image: score with the method's own score function, keep, merge;
- :mod:`.tower`     -- vision-tower internals (CLS attention, keys, upper hidden states) of
  vLLM's CLIP/SigLIP towers, for VisionZip and Nüwa;
- :mod:`.processor` -- the multimodal-processor side: ``n_keep`` placeholders per image;
- :mod:`.model`     -- the model side: all ``V`` features computed, ``n_keep`` returned;
- :mod:`.mrope`     -- M-RoPE positions of kept tokens (Qwen-VL) through vLLM's EVS hooks;
- :mod:`.llava`, :mod:`.llava_next`, :mod:`.llava_onevision`, :mod:`.qwen`, :mod:`.gemma3`,
  :mod:`.internvl`, :mod:`.idefics3` (Idefics3 and SmolVLM) --
  the classes registered over vLLM's own;
- :mod:`.transformers_backend` -- the same for vLLM's Transformers backend (any VLM it runs with
  ``model_impl="transformers"``, no per-model code);
- :mod:`.guard`     -- a ``vtp`` option on a model without an adapter is an error;
- :mod:`.support`   -- the support table the tests check and docs/support.md prints;
- :mod:`.compat`    -- workarounds for vLLM's CPU build (no torchvision; the runner's pruning flag);
- :mod:`.plugin`    -- what :func:`register` does.
"""


def register() -> None:
    """The ``vllm.general_plugins`` entry point (idempotent; vLLM calls it in every process)."""
    from .plugin import register as _register
    _register()


def register_compat() -> None:
    """The ``vtp_cpu_compat`` entry point: only the CPU-wheel workaround of :mod:`.compat`
    (``VLLM_PLUGINS=vtp_cpu_compat`` runs vLLM with it and without vtp's model classes)."""
    from .compat import pixtral_without_torchvision
    pixtral_without_torchvision()
