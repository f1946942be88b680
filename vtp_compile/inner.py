"""The inner backend: what compiles the (rewritten) graph after vtp's passes."""
from __future__ import annotations

import torch.fx as fx

from .config import PruneConfig


def lower(gm: fx.GraphModule, example_inputs, cfg: PruneConfig):
    """Hand the graph to the inner backend: Inductor with the mode's and the user's config
    patches, another registered backend by name, or the user's callable."""
    inner = cfg.inner_backend
    if callable(inner):
        return inner(gm, example_inputs)
    if inner == "eager":
        return gm.forward
    if inner == "inductor":
        import torch._inductor
        from torch._inductor.compile_fx import compile_fx
        from .kernels.lowering import decompositions
        patches = dict(torch._inductor.list_mode_options(cfg.mode)) if cfg.mode != "default" else {}
        patches.update(cfg.inductor_config)
        # the vtp ops that are plain tensor math are traced through (fused, generated code)
        with torch._inductor.config.patch(patches):
            decomps = decompositions()
        return compile_fx(gm, example_inputs, config_patches=patches, decompositions=decomps)
    from torch._dynamo import lookup_backend
    return lookup_backend(inner)(gm, example_inputs)
