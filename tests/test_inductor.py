"""Generated cases end to end through Inductor (the default inner backend).

Each example compiles one model and then runs several generated prompt batches through it
(lengths, padding side, images per row, batch size all drawn), as users do: the first call
compiles a static graph, the next one a dynamic one that every later shape reuses.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from vtp_compile.testing.oracle import OracleSpec, oracle_generate
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from .helpers import (FULL, assert_tokens_match, compiled_logits, oracle_logits, oracle_spec,
                      record_case, valid)
from .passes.test_compact import method_params
from .strategies import NO_SHRINK, keeps, prompt_batches, tiny_specs

pytestmark = pytest.mark.inductor
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
METHODS = ("fastv", "random", "divprune", "acgr")


@settings(max_examples=2 if FULL else 1, **SETTINGS)
@given(data=st.data())
def test_forward_through_inductor_equals_oracle(data):
    spec = data.draw(tiny_specs(layers=(2, 3)))
    method = data.draw(st.sampled_from(METHODS))
    keep = data.draw(keeps(spec.visual_tokens))
    params = data.draw(method_params(method, spec))
    model = tiny_llava(spec)
    opts = {"method": method, **keep, **params}
    with torch.no_grad():
        fast = None
        for _ in range(3):     # a static graph, then the dynamic one (compiled, then reused)
            inputs = make_inputs(spec, **data.draw(prompt_batches()))
            if fast is None:
                model(**inputs)
                fast = torch.compile(model, backend="vtp", options=opts)
            got = fast(**inputs).logits
            want = oracle_logits(model, inputs, oracle_spec(method, **keep, **params))
            torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=1e-4, rtol=1e-4)
            record_case("forward/inductor")


@settings(max_examples=1, **SETTINGS)
@given(data=st.data())
def test_generate_through_inductor_equals_oracle(data):
    spec = data.draw(tiny_specs(layers=(2, 3)))
    method = data.draw(st.sampled_from(METHODS))
    keep = data.draw(keeps(spec.visual_tokens))
    layer = {"layer": 1} if method in ("fastv", "acgr") else {}
    model = tiny_llava(spec)
    with torch.no_grad():
        for i in range(3):   # static prefill and decode graphs, dynamic ones, then reused
            inputs = make_inputs(spec, **dict(data.draw(prompt_batches()), side="left"))
            want, margins = oracle_generate(model, inputs["input_ids"], inputs["attention_mask"],
                                            inputs["pixel_values"], OracleSpec(method, layer=1, **keep), 4)
            if i == 0:
                model(**inputs)
                model.compile(backend="vtp", options={"method": method, **keep, **layer})
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], want, margins)
            record_case("generate/inductor")


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
        model.compile(backend="vtp", options={"method": "dstp", "budget": 3, "layer": 1, "tau": 0.0,
                                                         "reserve_by": "score"})
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], want, margins)
    record_case("generate/inductor")


@pytest.mark.extended
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
    record_case("forward/inductor")
    torch._dynamo.reset()      # rank="auto": calibration is the pass's, whatever lowers it
    compiled_logits(model, inputs, {"method": "alvts", "budget": 5, "layer": 1, "inner_backend": "eager"})
    assert any(r.phase == "prefill" and len(r.sites) == 2 for r in REPORTS[-3:])


def _nuwa():
    import vtp_compile
    from vtp_compile.testing import oracle_nuwa

    spec = TinySpec(layers=3, image_size=48)
    model = vtp_compile.attach(tiny_llava(spec))
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    return oracle_nuwa, model, inputs, (inputs["input_ids"], inputs["attention_mask"],
                                        inputs["pixel_values"], 5)


def test_nuwa_generate_through_inductor_equals_oracle():
    """Nüwa's carrier node and both stages through Inductor, internals looked up from
    generate's eager encoding: the prefill and the decode graph."""
    oracle_nuwa, model, inputs, args = _nuwa()
    want, margins = oracle_nuwa.nuwa_generate(model, *args, max_new_tokens=2)
    with torch.no_grad():
        model(**inputs)
        model.compile(backend="vtp", options={"method": "nuwa", "budget": 5})
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], want, margins)
    record_case("generate/inductor")


@pytest.mark.extended
def test_nuwa_forward_through_inductor_equals_oracle():
    """The direct forward: the vision internals computed inside the compiled graph."""
    oracle_nuwa, model, inputs, args = _nuwa()
    got = compiled_logits(model, inputs, {"method": "nuwa", "budget": 5})
    want, _ = oracle_nuwa.nuwa_forward(model, *args)
    torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=1e-4, rtol=1e-4)
    record_case("forward/inductor")


@pytest.mark.extended
@pytest.mark.parametrize("opts,pruning", [
    ({"method": "pdrop", "budget": 6, "layers": [1, 2]}, dict(method="pdrop", budget=6, layers=(1, 2))),
    ({"method": "dart", "budget": 5, "layer": 1}, dict(method="dart", budget=5, layer=1)),
], ids=["pdrop", "dart"])
def test_baselines_through_inductor_equal_the_mask_oracle(opts, pruning):
    """Extended tier. PDrop (several sites, its Triton op's CPU reference): a static then a
    dynamic batch (other length, other padding); DART (the same layer-site machinery, its own
    decomposed scoring): the static one."""
    from vtp_compile.testing.oracle_mask import Pruning

    from .helpers import check_forward_batches
    spec = TinySpec(layers=3)
    batches = [dict(batch=2, side="left", pad=(0, 2), seed=1),
               dict(batch=3, side="right", pad=(1, 0, 3), suffix=5, seed=2)]
    if opts["method"] == "dart":
        batches = batches[:1]
    check_forward_batches(spec, batches, opts, Pruning(**pruning), atol=1e-4)
