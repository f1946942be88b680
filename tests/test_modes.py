"""Inductor modes and inner backends (config.py, inner.py lower())."""
import pytest
import torch

from vtp_compile.errors import OptionError
from vtp_compile.config import PruneConfig
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from .helpers import oracle_logits, oracle_spec, valid


def _fastv(model, inputs, **extra):
    torch._dynamo.reset()
    fast = torch.compile(model, backend="vtp", options={"method": "fastv", "budget": 4,
                                                        "layer": 1, **extra})
    return fast(**inputs).logits


def _oracle(model, inputs):
    return oracle_logits(model, inputs, oracle_spec("fastv", budget=4, layer=1))


def test_a_user_callable_gets_the_pruned_graph():
    """``inner_backend`` may be any ``(gm, example_inputs) -> callable``: it receives the
    rewritten graph (with the selection in it) and its callable runs the model."""
    spec = TinySpec(layers=2)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    seen, calls = [], []

    def mine(gm, example_inputs):
        seen.append((gm, len(example_inputs)))

        def run(*args):
            calls.append(len(args))
            return gm.forward(*args)
        return run

    with torch.no_grad():
        model(**inputs)
        got = _fastv(model, inputs, inner_backend=mine)
        want = _oracle(model, inputs)
    assert seen, "the user's backend was never called"
    assert calls, "the callable the user's backend returned never ran"
    targets = {str(n.target) for gm, _ in seen for n in gm.graph.nodes}
    assert "vtp.select_keep.default" in targets
    m = valid(inputs)
    torch.testing.assert_close(got[m], want[m], atol=1e-5, rtol=1e-5)


def test_a_registered_backend_by_name():
    spec = TinySpec(layers=2)
    model = tiny_llava(spec)
    inputs = make_inputs(spec)
    with torch.no_grad():
        model(**inputs)
        got = _fastv(model, inputs, inner_backend="aot_eager")
        want = _oracle(model, inputs)
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


def test_dstp_under_reduce_overhead_fails_at_the_first_call_with_the_reason():
    """The refusal reaches the user through torch.compile (OptionError is a ValueError that
    Dynamo lets through), naming the method, the mode, the reason and the modes that work."""
    torch._dynamo.reset()
    f = torch.compile(lambda t: t * 2, backend="vtp",
                      options={"method": "dstp", "mode": "reduce-overhead"})
    with pytest.raises(ValueError) as err:
        f(torch.ones(3))
    msg = str(err.value)
    for part in ("'dstp'", "reduce-overhead", "shift_state", "max-autotune-no-cudagraphs"):
        assert part in msg, msg


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
