"""The inner backend (vtp_compile/inner.py): vtp graphs use Inductor's FX graph cache."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = r"""
import json, torch
import vtp_compile
from torch._dynamo.utils import counters
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava
torch.set_num_threads(1)
vtp_compile.configure_dynamo()
spec = TinySpec(layers=2)
model = tiny_llava(spec)
inputs = make_inputs(spec, prefix=2, suffix=3, seed=0)
with torch.no_grad():
    model(**inputs)
    out = torch.compile(model, backend="vtp", options={"method": "fastv", "budget": 3, "layer": 1})(**inputs)
print(json.dumps({k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}))
"""


@pytest.mark.inductor
def test_a_second_process_reuses_the_compiled_graph(tmp_path):
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold.get("fxgraph_cache_miss", 0) >= 1 and not cold.get("fxgraph_cache_bypass"), cold
    assert warm.get("fxgraph_cache_hit", 0) >= 1 and not warm.get("fxgraph_cache_miss"), warm


@pytest.mark.inductor
@pytest.mark.parametrize("copied", [False, True])
def test_a_memory_planning_cycle_compiles_again_without_that_reordering(copied, monkeypatch, caplog):
    """Inductor's peak-memory reordering can report a dependency cycle the scheduler's order does
    not have (in CI and in a full local run, on VidCom2 graphs): vtp compiles that graph again
    without the reordering, says so once, and the result is right. Anything else Inductor raises
    stays. ``copied``: the graph vtp gets is a copy of Dynamo's (as ``testing.multiplex`` hands
    it; the first compile leaves attributes on it that the second must not see)."""
    import copy
    import logging

    import torch
    from vtp_compile.backend import vtp_backend
    import torch._inductor.config as ic
    import torch._inductor.memory as memory

    monkeypatch.setattr(ic, "fx_graph_cache", False)
    calls = []

    def cyclic(nodes):
        calls.append(ic.reorder_for_peak_memory)
        raise RuntimeError("Cycle detected in memory planning graphPath containing cycle (i -> j: "
                           "j is a dependency of i): op1 -> op2 -> op1")
    monkeypatch.setattr(memory, "validate_graph_acyclic", cyclic)

    def f(x, y):
        a = torch.relu(x) @ y
        return torch.softmax(a, -1) * a.sum(-1, keepdim=True), (x * 2).cumsum(0)

    # on CPU the reordering is off unless asked for (the next test); asked for here
    opts = {"method": "fastv", "inductor_config": {"reorder_for_peak_memory": True}}

    def compiled(fn):
        if not copied:
            return torch.compile(fn, backend="vtp", options=opts)
        return torch.compile(fn, backend=lambda gm, ex: vtp_backend(copy.deepcopy(gm), ex,
                                                                    options=opts))

    x, y = torch.randn(6, 5), torch.randn(5, 7)
    with caplog.at_level(logging.WARNING, logger="vtp_compile"):
        got = compiled(f)(x, y)
    for g, w in zip(got, f(x, y)):
        torch.testing.assert_close(g, w)
    assert calls == [True], calls            # the first compile reordered, the second did not
    assert sum("peak-memory reordering found a dependency cycle" in r.getMessage()
               for r in caplog.records) == 1

    torch._dynamo.reset()
    monkeypatch.setattr(memory, "validate_graph_acyclic",
                        lambda nodes: (_ for _ in ()).throw(RuntimeError("something else")))
    with pytest.raises(Exception, match="something else"):
        compiled(f)(x + 1, y)


@pytest.mark.inductor
@pytest.mark.parametrize("asked", [None, True, False])
def test_cpu_graphs_skip_peak_memory_reordering_unless_asked(asked, monkeypatch):
    """On CPU, vtp graphs compile with ``reorder_for_peak_memory=False`` unless the user's
    ``inductor_config`` sets it (vtp_compile/inner.py: _on_gpu says why); a GPU graph keeps
    Inductor's default."""
    import torch
    import torch._inductor.compile_fx as cfx
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vtp_compile.config import PruneConfig
    from vtp_compile.inner import _on_gpu, lower

    seen = []
    real = cfx.compile_fx

    def spy(gm, example_inputs, config_patches=None, **kw):
        seen.append(dict(config_patches or {}))
        return real(gm, example_inputs, config_patches=config_patches, **kw)
    monkeypatch.setattr(cfx, "compile_fx", spy)
    opts = {"method": "fastv"}
    if asked is not None:
        opts["inductor_config"] = {"reorder_for_peak_memory": asked}
    x = torch.randn(4, 3)
    gm = torch.fx.symbolic_trace(lambda x: torch.relu(x).sum(0))
    fn = lower(gm, [x], PruneConfig.from_options(opts))
    torch.testing.assert_close(fn(x), torch.relu(x).sum(0))
    assert seen[0]["reorder_for_peak_memory"] is (False if asked is None else asked)
    assert seen[0]["realize_reads_threshold"] == 1          # the other CPU default (CPU_DEFAULTS)
    with FakeTensorMode():
        on_gpu = torch.empty(2, device="cuda")
    assert _on_gpu([on_gpu, 3]) and not _on_gpu([x, 3])


@pytest.mark.inductor
@pytest.mark.parametrize("asked", [None, False])
def test_an_index_checked_before_it_is_defined_compiles_again_without_the_checks(asked, monkeypatch,
                                                                                  caplog):
    """Inductor's C++ code can check an index before the line that defines it (g++: "'tmp27' was
    not declared in this scope" on an "index out of bounds" check; the drawn SparseVLM case is
    tests/test_inductor.py::test_an_index_checked_before_it_is_defined_compiles_without_the_checks):
    vtp compiles the graph again without Inductor's index bounds checks and says so once. When the
    checks are already off (the user's ``inductor_config``), or the error is another one, it is
    raised as it is."""
    import logging

    import torch
    import torch._inductor.compile_fx as cfx
    import torch._inductor.config as ic
    from torch._inductor.exc import CppCompileError

    from vtp_compile.config import PruneConfig
    from vtp_compile.inner import lower

    seen = []
    real = cfx.compile_fx
    output = ("k.main.cpp:189:49: error: 'tmp27' was not declared in this scope; did you mean "
              "'tmp21'?\n  189 |  TORCH_CHECK(tmp27 < ks3, \"index out of bounds: tmp27 < ks3\");")

    def failing(gm, example_inputs, config_patches=None, **kw):
        if config_patches is None:      # compile_fx calls itself inside its config patches
            return real(gm, example_inputs, **kw)
        seen.append(config_patches.get("assert_indirect_indexing", ic.assert_indirect_indexing))
        if seen[-1]:
            raise CppCompileError(["g++", "k.main.cpp"], output)
        return real(gm, example_inputs, config_patches=config_patches, **kw)
    monkeypatch.setattr(cfx, "compile_fx", failing)
    opts = {"method": "fastv"}
    if asked is not None:
        opts["inductor_config"] = {"assert_indirect_indexing": asked}
    x = torch.randn(4, 3)
    gm = torch.fx.symbolic_trace(lambda x: torch.relu(x).sum(0))
    with caplog.at_level(logging.WARNING, logger="vtp_compile"):
        fn = lower(gm, [x], PruneConfig.from_options(opts))
    torch.testing.assert_close(fn(x), torch.relu(x).sum(0))
    assert seen == ([True, False] if asked is None else [False]), seen
    assert sum("checks an index before defining it" in r.getMessage()
               for r in caplog.records) == (1 if asked is None else 0)

    # another C++ compile error stays an error
    output = "k.main.cpp:3:1: error: expected ';' before '}' token"
    seen.clear()
    with pytest.raises(Exception, match="expected ';'"):
        lower(gm, [x], PruneConfig.from_options({"method": "fastv"}))
    assert seen == [True]
