"""The config of the model whose forward Dynamo is compiling, read while the backend runs.

A torch.compile backend receives a graph and example inputs, not the module. One fact vtp needs
is in the model's config and nowhere in the graph: how many tokens a frame of a LLaVA-OneVision
or LLaVA-NeXT-Video clip has (a clip is one run of tokens with one-dimensional positions, and
under transformers' ``generate`` the vision tower runs before the compiled prefill, so the graph
holds only the clip's flattened features). While Dynamo calls the backend, the frame it traced
is its current instruction translator's, whose ``f_locals`` hold that call's ``self``: the model.

This reads a torch internal (``InstructionTranslator.current_tx().f_locals``). Where it is
missing or holds no model config (a backend called outside Dynamo, a frame that is not a
model's forward), the answer is None and vtp goes by the graph and the options alone.
"""
from __future__ import annotations

import logging

log = logging.getLogger("vtp_compile")


def traced_config():
    """The ``config`` of the ``self`` of the frame Dynamo is compiling now, or None."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator
        f_locals = InstructionTranslator.current_tx().f_locals
    except Exception as e:       # not inside Dynamo, or torch's internals moved
        log.debug("vtp: no traced frame to read the model's config from (%s)", type(e).__name__)
        return None
    owner = f_locals.get("self") if isinstance(f_locals, dict) else None
    config = getattr(owner, "config", None)
    return config if isinstance(getattr(config, "model_type", None), str) else None
