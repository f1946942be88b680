"""``vtp show`` logic: ask the backend which visual tokens each pruning site keeps, draw them.

Relies on ``vtp_compile.explain(model, inputs, options)``, whose report has ``.sites``; each
site has ``.name``, ``.layer``, ``.visual_count``, ``.kept`` and ``.kept_visual_index``
(LongTensor ``[B, kept]`` of indices into the image's visual tokens, raster order).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .compile import ExplainUnavailableError  # noqa: F401 (raised here; defined without PIL)
from .evaluate import build_prompt, prepare_processor
from .render import render_sites


def get_explain():
    """``vtp_compile.explain``, or :class:`ExplainUnavailableError` saying why not."""
    try:
        from vtp_compile import explain
        return explain
    except Exception as e:  # ImportError / AttributeError while the backend is being written
        raise ExplainUnavailableError(
            f"vtp_compile.explain is not available ({e!r}); `vtp show` needs the pruning "
            "backend installed (pip install -e .)") from e


def model_view(pixel_values, processor) -> Image.Image:
    """The first image of ``pixel_values`` ([B, 3, H, W]) de-normalised: what the model saw."""
    ip = processor.image_processor
    x = pixel_values[0].detach().float().cpu().numpy().transpose(1, 2, 0)
    mean = np.asarray(getattr(ip, "image_mean", None) or [0.0, 0.0, 0.0], dtype=np.float32)
    std = np.asarray(getattr(ip, "image_std", None) or [1.0, 1.0, 1.0], dtype=np.float32)
    if getattr(ip, "do_normalize", True):
        x = x * std + mean
    scale = 255.0 if getattr(ip, "do_rescale", True) else 1.0
    return Image.fromarray((x * scale).clip(0, 255).astype(np.uint8), "RGB")


def patch_grid(model, pixel_values, visual_count: int) -> tuple[int, int]:
    """Patch-grid shape for ``visual_count`` tokens of an image shaped like ``pixel_values``."""
    patch = getattr(getattr(model.config, "vision_config", None), "patch_size", None)
    h, w = pixel_values.shape[-2:]
    if patch and (h // patch) * (w // patch) == visual_count:
        return (h // patch, w // patch)
    side = math.isqrt(visual_count)
    if side * side == visual_count:
        return (side, side)
    raise ValueError(f"cannot lay {visual_count} visual tokens on a patch grid for a {h}x{w} "
                     f"image (patch size {patch})")


def explain_image(model, processor, image: Image.Image, question: str, options: dict,
                  prompt_template: str | None = None, sample: int = 0) -> Image.Image:
    """Render every site's kept tokens for one image/question; returns the PNG-ready sheet."""
    explain = get_explain()
    prepare_processor(processor)
    inputs = processor(images=[image], text=[build_prompt(processor, question, prompt_template)],
                       return_tensors="pt")
    report = explain(model, inputs, options)
    if not report.sites:
        raise RuntimeError(f"explain found no pruning site for options {options}")
    view = model_view(inputs["pixel_values"], processor)
    panels = []
    # kept indices are into the image's tokens; a later site (Nüwa's stage 2) sees fewer
    grid = patch_grid(model, inputs["pixel_values"], int(report.sites[0].visual_count))
    for site in report.sites:
        kept = [i for i in site.kept_visual_index[sample].tolist() if i >= 0]
        where = f"layer {site.layer}" if site.layer is not None else "encoder"
        panels.append((f"{site.name} @ {where}: {site.kept}/{site.visual_count}", kept))
    return render_sites(view, grid, panels)
