"""Where each method's kept visual tokens land on the shipped scene model: on shapes or not.

For held-out scenes of the given tasks, ``vtp_compile.explain`` gives every pruning site's kept
visual indices; a patch counts as on a shape when more than ``--cover`` of its pixels belong to
one (``label_map``). Prints, per method and site, the mean fraction of kept tokens on shapes,
next to the fraction of all patches that are.

    python benchmarks/kept_on_shapes.py --methods fastv,nuwa --budget 12 --n 10
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import vtp_compile
from vtp_compile.scenes import load_scene_model
from vtp_compile.scenes.generator import label_map
from vtp_compile.scenes.tasks import make_dataset


def on_shape_patches(scene, patch: int, grid: int, cover: float) -> np.ndarray:
    lab = label_map(scene) > 0
    return np.array([lab[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].mean() > cover
                     for r in range(grid) for c in range(grid)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="fastv,nuwa")
    p.add_argument("--budget", type=int, default=12)
    p.add_argument("--tasks", default="attribute,grounding")
    p.add_argument("--n", type=int, default=10, help="scenes per task")
    p.add_argument("--cover", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = load_scene_model()
    vc = model.config.vision_config
    patch, grid = vc.patch_size, vc.image_size // vc.patch_size
    fractions: dict[str, list[float]] = {}
    base: list[float] = []
    for task in args.tasks.split(","):
        for ex in make_dataset(task, args.n):
            on = on_shape_patches(ex.scene, patch, grid, args.cover)
            base.append(on.mean())
            inputs = dict(processor(images=ex.image, text=f"<image> {ex.question}", return_tensors="pt"))
            for method in args.methods.split(","):
                report = vtp_compile.explain(model, inputs, {"method": method, "budget": args.budget})
                for site in report.sites:
                    kept = site.kept_visual_index[0].numpy()
                    fractions.setdefault(f"{method}: {site.name}", []).append(on[kept].mean())
    print(f"{len(base)} scenes ({args.tasks}), budget {args.budget}; patches on shapes: "
          f"{np.mean(base):.0%}")
    for key, vals in fractions.items():
        print(f"  {key:28s} kept tokens on shapes: {np.mean(vals):.0%}")


if __name__ == "__main__":
    main()
