"""vtp_compile/graph/fx_utils.py: the incremental fake propagation after a rewrite."""
import torch

from vtp_compile.config import PruneConfig
from vtp_compile.graph.fx_utils import refresh_meta, tensor_val
from vtp_compile.passes.manager import PassManager
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava


def _shapes(gm):
    out = {}
    for n in gm.graph.nodes:
        v = tensor_val(n)
        if v is not None:
            out[n.name] = (str(tuple(v.shape)), str(v.stride()), v.dtype)
    return out


def test_incremental_refresh_equals_a_full_one():
    """Every node's shape, stride and dtype after the passes' incremental propagation equals a
    full re-propagation of the rewritten graph: a pruned prefill (static, then dynamic) and
    the decode graphs whose masks the decode pass rewrote."""
    seen = []
    cfg = PruneConfig.from_options({"method": "fastv", "budget": 3, "layer": 1, "inner_backend": "eager"})

    def backend(gm, example_inputs):
        work, report = PassManager(cfg)(gm, example_inputs)
        if report.phase in ("prefill", "decode"):
            incremental = _shapes(work)
            refresh_meta(work, example_inputs, incremental=False)
            seen.append((report.phase, bool(report.sites or report.decode_masks), incremental, _shapes(work)))
        return work.forward

    spec = TinySpec(layers=3)
    model = tiny_llava(spec)
    with torch.no_grad():
        for suffix in (3, 6):
            inputs = make_inputs(spec, batch=2, pad=(0, 2), suffix=suffix)
            model(**inputs)
            model.compile(backend=backend)
            model.generate(**inputs, max_new_tokens=3, do_sample=False)
            model._compiled_call_impl = None
    assert {(p, True) for p, rewritten, *_ in seen} >= {("prefill", True), ("decode", True)}
    for phase, _, incremental, full in seen:
        assert incremental == full, phase


def test_a_changed_shape_reaches_nodes_no_pass_touched():
    """x -> a = x * 2 -> b = a + 1 -> c = b.sum(-1). A pass slices x before ``a``: ``a`` is
    rewired, ``b`` and ``c`` are not, yet their shapes change and must be re-derived."""
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vtp_compile.graph.fx_utils import stamp_meta

    g = torch.fx.Graph()
    x = g.placeholder("x")
    a = g.call_function(torch.mul, (x, 2))
    b = g.call_function(torch.add, (a, 1))
    c = g.call_method("sum", (b, -1))
    g.output(c)
    gm = torch.fx.GraphModule(torch.nn.Module(), g)
    mode = FakeTensorMode()
    with mode:
        fx = torch.empty(6, 4)
    x.meta["example_value"] = fx
    with tracing(TracingContext(mode)):
        refresh_meta(gm, [fx], incremental=False)
        assert tensor_val(c).shape == (6,)
        stamp_meta(gm)
        with g.inserting_before(a):
            cut = g.call_function(torch.narrow, (x, 0, 0, 3))
        a.replace_input_with(x, cut)
        refresh_meta(gm, [fx])
    assert [tuple(tensor_val(n).shape) for n in (cut, a, b, c)] == [(3, 4), (3, 4), (3, 4), (3,)]
