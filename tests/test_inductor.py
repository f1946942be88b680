"""A few cases end to end through Inductor (the default inner backend)."""
import pytest
import torch

from vtp_compile.testing.oracle import OracleSpec, oracle_generate
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from .helpers import assert_tokens_match, compiled_logits, oracle_logits, oracle_spec, valid

pytestmark = pytest.mark.inductor


@pytest.mark.parametrize("method,layer", [("fastv", 2), ("random", None), ("acgr", 2)])
def test_forward_through_inductor_equals_oracle(method, layer):
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(1, 0))
    got = compiled_logits(model, inputs, {"method": method, "budget": 5, **({"layer": layer} if layer else {})})
    want = oracle_logits(model, inputs, oracle_spec(method, budget=5, layer=layer))
    torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=1e-4, rtol=1e-4)


def test_generate_through_inductor_equals_oracle():
    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    want, margins = oracle_generate(model, inputs["input_ids"], inputs["attention_mask"],
                                    inputs["pixel_values"], OracleSpec("fastv", budget=4, layer=1), 4)
    with torch.no_grad():
        model(**inputs)
        model.compile(backend="vtp", options={"method": "fastv", "budget": 4, "layer": 1})
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], want, margins)


def test_dstp_generate_through_inductor_equals_oracle():
    """DSTP's decode ops read and update runtime state; Inductor must call them every step."""
    from vtp_compile.testing.oracle_dstp import dstp_generate

    spec = TinySpec(layers=3, seed=1)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2), tiles=2)
    want, margins, hist = dstp_generate(model, inputs["input_ids"], inputs["attention_mask"],
                                        inputs["pixel_values"], 3, None, 1, 0.0, 5)
    assert hist[1] != hist[0], "this case should swap the active set"
    with torch.no_grad():
        model(**inputs)
        model.compile(backend="vtp", options={"method": "dstp", "budget": 3, "layer": 1, "tau": 0.0})
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], want, margins)


def test_alvts_through_inductor_equals_oracle():
    """Per-layer routing with selector constants (get_attr buffers) through Inductor; the
    default rank="auto" calibrates on the example inputs while compiling."""
    from vtp_compile.passes.manager import REPORTS
    from vtp_compile.testing.oracle_alvts import alvts_forward

    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    got = compiled_logits(model, inputs, {"method": "alvts", "budget": 5, "layer": 1, "rank": 3})
    want, _ = alvts_forward(model, inputs["input_ids"], inputs["attention_mask"],
                            inputs["pixel_values"], OracleSpec("alvts", budget=5, layer=1), 3)
    torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=1e-4, rtol=1e-4)
    torch._dynamo.reset()
    compiled_logits(model, inputs, {"method": "alvts", "budget": 5, "layer": 1})
    assert any(r.phase == "prefill" and len(r.sites) == 2 for r in REPORTS[-3:])


def test_nuwa_through_inductor_equals_oracle():
    """Nüwa's carrier node and both stages through Inductor: forward (internals in the graph)
    and generate (internals looked up from generate's eager encoding)."""
    import vtp_compile
    from vtp_compile.testing import oracle_nuwa

    spec = TinySpec(layers=3, image_size=48)
    model = vtp_compile.attach(tiny_llava(spec))
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    args = (inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], 5)
    got = compiled_logits(model, inputs, {"method": "nuwa", "budget": 5})
    want, _ = oracle_nuwa.nuwa_forward(model, *args)
    torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=1e-4, rtol=1e-4)
    torch._dynamo.reset()
    want, margins = oracle_nuwa.nuwa_generate(model, *args, max_new_tokens=4)
    with torch.no_grad():
        model.compile(backend="vtp", options={"method": "nuwa", "budget": 5})
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], want, margins)
