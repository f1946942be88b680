"""generate() after a pruned prefill: compacted cache, oracle-equal tokens, no recompiles."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tests.helpers import REPORTS
from vtp_compile.testing.oracle import OracleSpec, oracle_generate
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from vtp_compile.kernels.cache import dead_columns

from ..helpers import assert_tokens_match, options, record_case
from ..strategies import NO_SHRINK, keeps, prompt_batches, tiny_specs


def _generate(model, inputs, opts, **kw):
    with torch.no_grad():
        model(**inputs)
        model.compile(backend="vtp", options=opts)
        return model.generate(**inputs, return_dict_in_generate=True, **kw)


def _cache_lengths(cache):
    return [layer.keys.shape[-2] for layer in cache.layers]


@settings(max_examples=6, phases=NO_SHRINK)
@given(method=st.sampled_from(["fastv", "random", "divprune", "acgr"]), data=st.data())
def test_greedy_generate_equals_oracle(method, data):
    """Ragged batches (images per row, text-only rows), any lengths, left padding (generate
    continues from each row's last position, so right padding is not generation input: as
    transformers says, decoder-only generation needs left padding)."""
    torch._dynamo.reset()
    spec = data.draw(tiny_specs(layers=(2, 3)))
    batch = dict(data.draw(prompt_batches()), side="left")
    keep = data.draw(keeps(spec.visual_tokens))
    inputs = make_inputs(spec, **batch)
    model = tiny_llava(spec)
    want, margins = oracle_generate(model, inputs["input_ids"], inputs["attention_mask"],
                                    inputs["pixel_values"], OracleSpec(method, layer=1, **keep), 5)
    layer = 1 if method in ("fastv", "acgr") else None
    out = _generate(model, inputs, options(method, layer=layer, **keep),
                    max_new_tokens=5, do_sample=False)
    got = out.sequences[:, inputs["input_ids"].shape[1]:]
    assert_tokens_match(got, want, margins)
    record_case("generate/eager")
    # every layer holds the same compacted cache; each row's live (unmarked) columns are its
    # kept tokens (real text + kept visual) plus the generated ones (the last one is not cached)
    caches = out.past_key_values.layers
    assert len({lyr.keys.shape[-2] for lyr in caches}) == 1
    comp, pos = dead_columns(caches[0].values)
    assert not pos.any()
    spec_o = OracleSpec(method, layer=1, **keep)
    for b, (pre, suf, n_img) in enumerate(batch["rows"]):
        V = n_img * spec.visual_tokens
        real = pre + suf + V + max(n_img - 1, 0)
        kept = real - V + (spec_o.n_keep(V) if V else 0)
        assert int((~comp[b]).sum()) == kept + 4, (b, batch)


def test_sampling_runs_and_keeps_shapes():
    spec = TinySpec()
    inputs = make_inputs(spec, batch=2, pad=(2, 0))
    model = tiny_llava(spec)
    torch.manual_seed(0)
    out = _generate(model, inputs, options("fastv", budget=4, layer=1), max_new_tokens=6,
                    do_sample=True, top_k=5)
    assert out.sequences.shape == (2, inputs["input_ids"].shape[1] + 6)


def test_kv_bytes_saved_in_generate():
    spec = TinySpec(layers=4)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    base = tiny_llava(spec)
    with torch.no_grad():
        full = base.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    pruned = _generate(tiny_llava(spec), inputs, options("fastv", budget=4, layer=2), max_new_tokens=3,
                       do_sample=False)
    nbytes = lambda c: sum(l.keys.numel() * l.keys.element_size() * 2 for l in c.layers)  # noqa: E731
    saved = nbytes(full.past_key_values) - nbytes(pruned.past_key_values)
    per_token = 2 * spec.kv_heads * (spec.hidden // spec.heads) * 4 * spec.layers * 2  # batch 2
    assert saved == (spec.visual_tokens - 4) * per_token


def test_decode_after_an_unpruned_prefill_keeps_transformers_mask():
    """A cache without dead-slot markers (a text-only prompt: nothing pruned) decodes as usual."""
    spec = TinySpec()
    inputs = make_inputs(spec, batch=2, pad=(0, 3), text_only=True)
    model = tiny_llava(spec)
    with torch.no_grad():
        want = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    out = _generate(model, inputs, options("fastv", budget=4, layer=1), max_new_tokens=4,
                    do_sample=False)
    assert torch.equal(out.sequences, want)
    assert any(r.phase == "decode" and r.decode_masks for r in REPORTS)


@pytest.mark.parametrize("capture_scalars", [True, False])
@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("method", ["fastv", "random"])
def test_no_recompile_per_prompt_length_or_step(method, grad_mode, capture_scalars, monkeypatch):
    """Dynamic-shape recompiles are pruned too and stay oracle-exact. inference_mode without
    capture_scalar_outputs (what ``vtp eval`` runs) once failed re-propagating fake shapes."""
    monkeypatch.setattr(torch._dynamo.config, "capture_scalar_outputs", capture_scalars)
    spec = TinySpec()
    model = tiny_llava(spec)
    start = len(REPORTS)
    layer = 1 if method == "fastv" else None
    with grad_mode():
        model(**make_inputs(spec))
        model.compile(backend="vtp", options=options(method, budget=4, layer=layer))
        for suffix in (2, 3, 5, 7):
            inputs = make_inputs(spec, batch=2, pad=(0, 1 + suffix % 2), suffix=suffix, seed=suffix)
            got = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            want, margins = oracle_generate(model, inputs["input_ids"], inputs["attention_mask"],
                                            inputs["pixel_values"],
                                            OracleSpec(method, budget=4, layer=layer or 2), 4)
            assert_tokens_match(got[:, inputs["input_ids"].shape[1]:], want, margins)
            record_case("generate/eager")
    phases = [r.phase for r in REPORTS[start:]]
    assert all(r.sites for r in REPORTS[start:] if r.phase == "prefill"), "a prefill went unpruned"
    # first prefill static, one dynamic recompile; decode: one static, one dynamic recompile
    assert phases.count("prefill") <= 2 and phases.count("decode") <= 2, phases
