import os

# Triton kernels run in Triton's CPU interpreter when no GPU is present; the interpreter is
# chosen when a kernel is decorated (triton's own library kernels: at `import triton`), so this
# must be set before anything imports triton (tests/kernels/triton/).
if os.environ.get("CUDA_VISIBLE_DEVICES", None) != "" and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from hypothesis import HealthCheck, settings

from .helpers import CASES, FULL

# One hypothesis profile for the suite (a test sets only max_examples, and phases where a
# compile-heavy test should not shrink: strategies.NO_SHRINK).
# * deadline None: an example compiles a model (seconds to a minute on these machines);
# * too_slow suppressed: st.data() tests draw batches between compiles, and hypothesis counts
#   the compile time as generation time;
# * print_blob: a failure prints the @reproduce_failure line that replays it exactly; the
#   example database (.hypothesis/) also replays it on the next local run.
settings.register_profile("vtp", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("VTP_HYPOTHESIS_PROFILE", "vtp"))

# under pytest-xdist (`make test` runs one worker per core) each worker gets one thread
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


# Dynamo's fake-tensor dispatch cache costs more than it saves on these tiny, ever-new graphs
# (each test traces a fresh model once; measured: a Qwen2.5-VL compile 28.2 s -> 23.8 s); it
# is a tracing-speed knob with no effect on graphs or results. VTP_FAKE_CACHE=1 turns it back on.
if not os.environ.get("VTP_FAKE_CACHE"):
    torch._dynamo.config.fake_tensor_cache_enabled = False


# The extended tier (VTP_FULL=1): tests marked ``extended`` repeat, through Inductor or across
# more methods, what CI checks with the eager inner backend or with one method of a kind
# (docs/tests.md). CI skips them to stay within its time; run them before a release
# (FULL: tests/helpers.py).


def pytest_collection_modifyitems(config, items):
    if FULL:
        return
    skip = pytest.mark.skip(reason="extended tier: VTP_FULL=1 runs it (docs/tests.md)")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _inductor_only_where_marked(request, monkeypatch):
    """An Inductor compile costs a minute of CPU here: a test not marked ``inductor`` that
    reaches one (a forgotten ``inner_backend="eager"``) fails instead of slowing CI."""
    if "inductor" in request.keywords:
        return
    import torch._inductor.compile_fx as compile_fx

    def refuse(*args, **kwargs):
        raise AssertionError("an Inductor compile in a test not marked `inductor`: pass "
                             "inner_backend='eager' or mark the test (tests/conftest.py)")
    monkeypatch.setattr(compile_fx, "compile_fx", refuse)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    old = torch._dynamo.config.capture_scalar_outputs, torch._dynamo.config.recompile_limit
    torch._dynamo.config.capture_scalar_outputs = True
    torch._dynamo.config.recompile_limit = 64
    yield
    torch._dynamo.config.capture_scalar_outputs, torch._dynamo.config.recompile_limit = old
    torch._dynamo.reset()


def pytest_sessionfinish(session):
    """An xdist worker hands its case counts to the controller."""
    out = getattr(session.config, "workeroutput", None)
    if out is not None:
        out["vtp_cases"] = dict(CASES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    CASES.update(getattr(node, "workeroutput", {}).get("vtp_cases", {}))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print how many generated inputs were checked, by kind (docs/tests.md)."""
    if CASES:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(CASES.items()))
        terminalreporter.write_line(f"vtp generated cases checked: {sum(CASES.values())} ({parts})")


@pytest.fixture(autouse=True)
def _record_reports():
    """``tests.helpers.REPORTS``: the reports of the graphs vtp compiles during the test."""
    from vtp_compile.report import recording
    from tests.helpers import REPORTS
    REPORTS.clear()
    with recording(REPORTS):
        yield


@pytest.fixture
def dynamo_for(monkeypatch):
    """``dynamo_for(family)``: the Dynamo settings that family needs (support.DYNAMO), for the test."""
    from vtp_compile.testing import support

    def apply(family):
        for k, v in support.DYNAMO.get(family, {}).items():
            monkeypatch.setattr(torch._dynamo.config, k, v)
    return apply
