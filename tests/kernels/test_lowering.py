"""What reaches Inductor: decomposed vtp ops are traced through; only declared Triton-kernel
ops stay calls in the generated code (vtp_compile/kernels/lowering.py)."""
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from vtp_compile.kernels import lowering
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from .test_cuda_path import _inputs


def test_every_op_is_classified():
    names = {n for n in dir(torch.ops.vtp)
             if isinstance(getattr(torch.ops.vtp, n, None), torch._ops.OpOverloadPacket)}
    groups = [set(g) for g in (lowering.DECOMPOSED, lowering.TRITON, lowering.STATEFUL)]
    classified = set().union(*groups)
    assert names <= classified, f"unclassified vtp ops: {sorted(names - classified)}"
    assert sum(len(g) for g in groups) == len(classified), "an op is in two classes"


def test_no_op_is_left_opaque():
    """Every op reaches Inductor as generated code or a declared Triton kernel (issue 12): the
    class of opaque reference calls ("extern") is gone and must not come back."""
    assert not hasattr(lowering, "EXTERN")
    for name in lowering.TRITON:   # a Triton op has its CUDA kernel registered
        op = getattr(torch.ops.vtp, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA"), name


@pytest.mark.parametrize("name", sorted(lowering.DECOMPOSED))
def test_decomposition_is_functional(name):
    """A decomposition runs below functionalization: an in-place op would reach Inductor as a
    mutation of a graph value, which it rejects."""
    real = _real_cpu_args(name)
    tensors = [i for i, a in enumerate(real) if isinstance(a, torch.Tensor)]

    def fn(*ts):
        full = list(real)
        for i, t in zip(tensors, ts):
            full[i] = t
        return lowering.DECOMPOSED[name](*full)

    gm = make_fx(fn, tracing_mode="fake")(*[real[i] for i in tensors])
    mutating = [n.target for n in gm.graph.nodes
                if isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable]
    assert not mutating, f"{name}: in-place ops {mutating}"


def _real_cpu_args(name):
    with FakeTensorMode():
        args = _inputs()[name]
    return [torch.zeros(a.shape, dtype=a.dtype) if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.inductor
def test_fastv_prefill_has_no_opaque_vtp_calls():
    """Inductor's generated code for a pruned FastV prefill (CPU, padded batch) calls no vtp op
    except the declared Triton-kernel ones. The same compile is the regression for odd kept
    widths, which crashed Inductor's alignment check on select_keep's output under
    ``inference_mode`` (71, 73, 79 tokens failed; 72, 80 worked): a padded batch (equal to the
    eager inner backend at every position), then prompt lengths odd and even (a static graph,
    then the dynamic one), each equal to the oracle."""
    from torch._inductor.utils import run_and_get_code

    from vtp_compile.testing.oracle import OracleSpec

    from ..helpers import oracle_logits, valid
    spec = TinySpec(layers=2)
    model = tiny_llava(spec)
    opts = {"method": "fastv", "budget": 5, "layer": 1}
    batches = [make_inputs(spec, prefix=3, **b) for b in
               (dict(batch=2, pad=(0, 2), suffix=3), dict(suffix=4), dict(suffix=5), dict(suffix=10))]
    with torch.inference_mode():
        model(**batches[0])
        eager = torch.compile(model, backend="vtp", options={**opts, "inner_backend": "eager"})(**batches[0]).logits
        torch._dynamo.reset()
        fast = torch.compile(model, backend="vtp", options=opts)
        out, codes = run_and_get_code(lambda: fast(**batches[0]))
        called = set()
        for code in codes:
            called |= set(re.findall(r"torch\.ops\.vtp\.(\w+)", code))
        assert called <= set(lowering.TRITON), f"opaque vtp calls: {sorted(called - set(lowering.TRITON))}"
        assert "select_keep" in called                 # the pass did prune
        assert "gather" in "".join(codes)              # ... and the gathers are generated code
        torch.testing.assert_close(out.logits, eager, atol=1e-4, rtol=1e-4)
        for inputs in batches:
            got = out.logits if inputs is batches[0] else fast(**inputs).logits
            want = oracle_logits(model, inputs, OracleSpec("fastv", budget=5, layer=1))
            torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=1e-4, rtol=1e-4)


def test_stateful_ops_are_cudagraph_unsafe():
    """Inductor's CUDA graphs (reduce-overhead) must not capture an op whose effect is Python
    state: a replay would skip it. The tag makes Inductor leave such graphs uncaptured."""
    from torch._inductor.utils import get_first_incompatible_cudagraph_node
    tag = torch.Tag.cudagraph_unsafe
    for name in lowering.STATEFUL:
        assert tag in getattr(torch.ops.vtp, name).default.tags, name
    for name in lowering.DECOMPOSED:
        assert tag not in getattr(torch.ops.vtp, name).default.tags, name
    g = torch.fx.Graph()
    x = g.placeholder("x")
    g.output(g.call_function(torch.ops.vtp.splice_lookup.default, (x,)))
    gm = torch.fx.GraphModule(torch.nn.Module(), g)
    assert get_first_incompatible_cudagraph_node(gm) is not None
