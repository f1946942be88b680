"""Inductor modes and inner backends (config.py, passes/manager.py lower())."""
import pytest
import torch

from vtp_compile.errors import OptionError
from vtp_compile.config import PruneConfig
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava


def _fastv(model, inputs, **extra):
    torch._dynamo.reset()
    fast = torch.compile(model, backend="vtp", options={"method": "fastv", "budget": 4,
                                                        "layer": 1, **extra})
    return fast(**inputs).logits


def test_a_user_callable_gets_the_pruned_graph():
    """``inner_backend`` may be any ``(gm, example_inputs) -> callable``: it receives the
    rewritten graph (with the selection in it) and its callable runs the model."""
    spec = TinySpec(layers=2)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    seen = []

    def mine(gm, example_inputs):
        seen.append((gm, len(example_inputs)))
        return gm.forward

    with torch.no_grad():
        model(**inputs)
        want = _fastv(model, inputs, inner_backend="eager")
        got = _fastv(model, inputs, inner_backend=mine)
    assert seen, "the user's backend was never called"
    targets = {str(n.target) for gm, _ in seen for n in gm.graph.nodes}
    assert "vtp.select_keep.default" in targets
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_a_registered_backend_by_name():
    spec = TinySpec(layers=2)
    model = tiny_llava(spec)
    inputs = make_inputs(spec)
    with torch.no_grad():
        model(**inputs)
        want = _fastv(model, inputs, inner_backend="eager")
        got = _fastv(model, inputs, inner_backend="aot_eager")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode,graphs", [("default", False), ("reduce-overhead", True),
                                         ("max-autotune", True), ("max-autotune-no-cudagraphs", False)])
def test_dstp_refuses_cuda_graphs(mode, graphs):
    opts = {"method": "dstp", "mode": mode}
    if graphs:
        with pytest.raises(OptionError, match="cannot run under CUDA graphs.*max-autotune-no-cudagraphs"):
            PruneConfig.from_options(opts)
    else:
        assert PruneConfig.from_options(opts).mode == mode
    with pytest.raises(OptionError, match="CUDA graphs"):
        PruneConfig.from_options({"method": "dstp", "inductor": {"triton.cudagraphs": True}})
    assert PruneConfig.from_options({"method": "fastv", "mode": mode}).mode == mode


@pytest.mark.inductor
def test_a_mode_patches_inductors_config():
    """``mode`` means what it means for Inductor: its config patches are active while vtp's
    graph compiles (read from inside Inductor by a post-grad pass), and the result runs."""
    seen = {}

    def probe(graph):
        import torch._inductor.config as c
        seen["max_autotune"] = c.max_autotune
        seen["cudagraphs"] = c.triton.cudagraphs

    x = torch.randn(4, 8)
    for mode in ("max-autotune-no-cudagraphs", "reduce-overhead"):
        torch._dynamo.reset()
        f = torch.compile(lambda t: torch.relu(t) * 2, backend="vtp",
                          options={"mode": mode, "inductor": {"post_grad_custom_post_pass": probe}})
        torch.testing.assert_close(f(x), torch.relu(x) * 2)
        assert seen == {"max_autotune": mode.startswith("max"), "cudagraphs": mode == "reduce-overhead"}


@pytest.mark.inductor
def test_max_autotune_no_cudagraphs_prunes_on_cpu():
    spec = TinySpec(layers=2)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    with torch.no_grad():
        model(**inputs)
        want = _fastv(model, inputs, inner_backend="eager")
        got = _fastv(model, inputs, mode="max-autotune-no-cudagraphs")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
