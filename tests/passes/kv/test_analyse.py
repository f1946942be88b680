"""KV layouts are decided once per layer from the graph: one family per kind."""
import pytest
import torch

import vtp_compile
from vtp_compile.testing import families as F

ROWS = [F.RowSpec(3, 4, (F.ImageSpec(),)), F.RowSpec(4, 3, (F.ImageSpec(),))]


def _layouts(family, method="fastv", cache=None, **options):
    model = F.build_model(family)
    inputs = F.make_inputs(family, model, ROWS, padding_side="left", seed=3)
    opts = {"method": method, "budget": 2, "inner_backend": "eager", **options}
    with torch.no_grad(), vtp_compile.recording() as reps:
        model(**inputs)
        model.compile(backend="vtp", options=opts)
        try:
            kw = {"cache_implementation": cache} if cache else {}
            model.generate(**inputs, max_new_tokens=2, do_sample=False, **kw)
        finally:
            model._compiled_call_impl = None
    return [(r.phase, r.layouts, r.skipped) for r in reps if r.phase in ("prefill", "decode")]


def test_full_attention_layers_are_compacted():
    got = _layouts("llava", layer=1)
    assert got and all(set(lay) == {"compacted"} for _, lay, _ in got), got


def test_a_static_cache_is_a_static_buffer():
    got = _layouts("llava", cache="static", layer=1)
    assert got and all(set(lay) == {"static buffer"} and why is None for _, lay, why in got), got


@pytest.mark.slow
def test_sliding_window_layers_keep_positions():
    got = _layouts("gemma3", layer=1)
    kinds = {k for _, lay, _ in got for k in lay}
    assert {"positional window", "compacted"} <= kinds, got


@pytest.mark.slow
def test_hybrid_layers_are_token_mixing_state():
    got = _layouts("qwen3_5", method="divprune")
    kinds = {k for _, lay, _ in got for k in lay}
    assert "token-mixing state" in kinds, got
