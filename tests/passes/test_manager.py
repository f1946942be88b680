"""The pass manager and its protocol: ordered passes, per-pass reports, reports kept with the
model, graph dumps, and errors that keep their kind."""
import gc
import json

import pytest
import torch

import vtp_compile
from vtp_compile.errors import OptionError, PassError
from vtp_compile.passes import compact
from vtp_compile.passes.base import GraphPass
from vtp_compile.passes.manager import PassManager
from vtp_compile.passes.pipeline import PASSES
from vtp_compile.report import reports
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

SPEC = TinySpec(layers=3)
OPTIONS = {"method": "fastv", "budget": 3, "layer": 1, "inner_backend": "eager"}


@pytest.fixture(scope="module")
def model_inputs():
    model = tiny_llava(SPEC)
    inputs = make_inputs(SPEC, prefix=3, suffix=4, seed=1)
    with torch.no_grad():
        model(**inputs)        # transformers' output-capture hooks: installed on a first call
    return model, inputs


def test_every_pass_has_the_protocol():
    names = [p.name for p in PASSES]
    assert len(set(names)) == len(names)
    for p in PASSES:
        assert isinstance(p, GraphPass) and p.phases
        key = p.cache_key()
        assert len(key) == 16 and key == p.cache_key()
    cfg = vtp_compile.PruneConfig.from_options(OPTIONS)
    other = vtp_compile.PruneConfig.from_options({**OPTIONS, "budget": 4})
    assert PassManager(cfg).cache_key() != PassManager(other).cache_key()


def test_reports_are_kept_with_the_model_and_say_what_each_pass_inserted(model_inputs):
    model, inputs = model_inputs
    compiled = torch.compile(model, backend="vtp", options=OPTIONS)
    with torch.no_grad(), vtp_compile.recording() as recorded:
        compiled(**inputs)
    got = reports(compiled)
    assert got and got == reports(model) and recorded == got[-len(recorded):]
    prefill = [r for r in got if r.phase == "prefill"][-1]
    assert [s.kept for s in prefill.sites] == [3] and prefill.skipped is None
    assert prefill.layouts == {"compacted": SPEC.layers}     # a forward fills a dynamic cache
    by_pass = {p.name: p.inserted for p in prefill.passes}
    assert list(by_pass) == ["compact", "finish_caches", "strip_vision_context"]
    assert by_pass["compact"]["select_keep.default"] == 1
    assert by_pass["compact"]["score"] == 1                      # fastv's score, traced in
    assert by_pass["compact"]["gather_seq.default"] >= 1
    assert by_pass["finish_caches"] == {}
    assert "compact: " in prefill.passes[0].line()


def test_reports_go_with_the_model():
    model = tiny_llava(SPEC)
    inputs = make_inputs(SPEC, prefix=2, suffix=2, seed=2)
    with torch.no_grad():
        model(**inputs)
        torch.compile(model, backend="vtp", options=OPTIONS)(**inputs)
    from vtp_compile import report
    assert reports(model)
    before = len(report._BY_PARAMETER)
    del model
    torch._dynamo.reset()       # Dynamo's caches hold the model's parameters too
    gc.collect()
    assert len(report._BY_PARAMETER) < before


def test_decode_graphs_report_their_masks(model_inputs):
    model, inputs = model_inputs
    with torch.no_grad(), vtp_compile.recording() as recorded:
        model.compile(backend="vtp", options=OPTIONS)
        try:
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        finally:
            model._compiled_call_impl = None
    decode = [r for r in recorded if r.phase == "decode"]
    prefill = [r for r in recorded if r.phase == "prefill"]
    assert prefill and prefill[-1].layouts == {"compacted": SPEC.layers}
    assert decode and decode[-1].decode_masks == SPEC.layers
    assert [p.name for p in decode[-1].passes] == ["decode_masks"]
    assert decode[-1].passes[0].inserted["decode_mask_for"] == SPEC.layers


def test_dump_writes_each_pass_before_and_after_and_changes_nothing(model_inputs, tmp_path, monkeypatch):
    model, inputs = model_inputs
    with torch.no_grad():
        plain = torch.compile(model, backend="vtp", options=OPTIONS)(**inputs).logits
        torch._dynamo.reset()
        monkeypatch.setenv("VTP_DUMP_DIR", str(tmp_path))
        dumped = torch.compile(model, backend="vtp", options=OPTIONS)(**inputs).logits
    assert torch.equal(plain, dumped)
    (folder,) = [d for d in tmp_path.iterdir() if d.name.endswith("-prefill")]
    files = sorted(f.name for f in folder.iterdir())
    assert files == ["01-compact.after.py", "01-compact.before.py", "02-finish_caches.after.py",
                     "02-finish_caches.before.py", "03-strip_vision_context.after.py",
                     "03-strip_vision_context.before.py", "report.json"]
    before = (folder / "01-compact.before.py").read_text()
    after = (folder / "01-compact.after.py").read_text()
    assert "select_keep" not in before and "select_keep" in after
    rep = json.loads((folder / "report.json").read_text())
    assert rep["phase"] == "prefill" and rep["sites"][0]["kept"] == 3


def test_a_pass_that_fails_is_a_bug_naming_the_pass(model_inputs, monkeypatch):
    model, inputs = model_inputs

    def broken(*args, **kwargs):
        raise KeyError("a bug")
    monkeypatch.setattr(compact, "apply_site", broken)
    with pytest.raises(PassError, match="internal error in pass 'compact'.*KeyError") as e, torch.no_grad():
        torch.compile(model, backend="vtp", options=OPTIONS)(**inputs)
    assert not isinstance(e.value, ValueError) and isinstance(e.value, RuntimeError)


def test_an_option_the_model_refutes_stays_an_option_error(model_inputs):
    model, inputs = model_inputs
    with pytest.raises(OptionError, match="layer 7 is out of range"), torch.no_grad():
        torch.compile(model, backend="vtp", options={**OPTIONS, "layer": 7})(**inputs)
