"""transformers' static cache (``generate(..., cache_implementation="static")``) is refused with
one clear warning and runs unpruned, unchanged (see NOTES_README.md for why it is not pruned)."""
import logging

import torch
import torch.nn.functional as F

from vtp_compile import backend
from vtp_compile.graph.fx_utils import is_static_cache_write


def _layer(x, keys, values, pos):
    """One attention layer over a static cache, the way ``StaticLayer.update`` writes it."""
    keys.index_copy_(2, pos, x)
    values.index_copy_(2, pos, x * 2)
    return F.scaled_dot_product_attention(x, keys, values)


def _args():
    x = torch.randn(1, 2, 3, 4)
    return x, torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 8, 4), torch.arange(3)


def test_static_cache_graph_runs_unpruned_with_one_warning(caplog, monkeypatch):
    monkeypatch.setattr(backend, "_warned_static", False)
    torch._dynamo.reset()
    f = torch.compile(_layer, backend="vtp", options={"method": "fastv", "inner_backend": "eager"})
    want_args, got_args = _args(), None
    got_args = tuple(t.clone() for t in want_args)
    with caplog.at_level(logging.INFO, logger="vtp_compile"):
        got = f(*got_args)
        torch._dynamo.reset()
        f(*(t.clone() for t in want_args))       # a second graph: info, not a second warning
    want = _layer(*want_args)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_args[1], want_args[1])      # the in-place write happened
    warns = [r for r in caplog.records if r.levelno == logging.WARNING and "static KV cache" in r.message]
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "static KV cache" in r.message]
    assert len(warns) == 1 and len(infos) == 1, [r.message for r in caplog.records]
    assert "cache_implementation='static'" in warns[0].message


def test_only_4d_writes_on_the_sequence_dim_count():
    g = torch.fx.symbolic_trace(lambda b, i, x: (b.index_copy_(2, i, x), b.index_copy(1, i, x)))
    nodes = [n for n in g.graph.nodes if n.op == "call_method"]
    for n, v in zip(nodes, (torch.zeros(1, 2, 8, 4),) * 2):
        n.args[0].meta["example_value"] = v
    assert [is_static_cache_write(n) for n in nodes] == [True, False]
