"""Shared test helpers: compile a tiny model with vtp and compare against the oracle."""
from __future__ import annotations

import collections
import os

import torch

from vtp_compile.testing.oracle import OracleSpec, oracle_forward, oracle_generate

# the reports of every graph vtp compiles during the running test (tests/conftest.py records
# them with vtp_compile.recording)
REPORTS: list = []

# the extended tier (tests/conftest.py, docs/tests.md)
FULL = bool(os.environ.get("VTP_FULL"))


# generated cases checked against an oracle or the unpruned model, by kind; printed at the end
# of the run (tests/conftest.py)
CASES: collections.Counter = collections.Counter()


def record_case(kind: str, n: int = 1) -> None:
    """Count ``n`` checked inputs of ``kind`` (e.g. "forward/inductor")."""
    CASES[kind] += n


def options(method, budget=None, ratio=None, layer=None, inner="eager", **params):
    o = {"method": method, "inner_backend": inner, **params}
    if budget is not None:
        o["budget"] = budget
    if ratio is not None:
        o["ratio"] = ratio
    if layer is not None:
        o["layer"] = layer
    return o


def oracle_spec(method, budget=None, ratio=None, layer=None, **params):
    return OracleSpec(method, budget=budget, ratio=ratio, layer=layer if layer is not None else 2,
                      **params)


def valid(inputs):
    return inputs["attention_mask"].bool()


@torch.no_grad()
def compiled_logits(model, inputs, opts):
    model(**inputs)  # eager warm-up (transformers' output hooks graph-break on a first call)
    fast = torch.compile(model, backend="vtp", options=opts)
    return fast(**inputs).logits


@torch.no_grad()
def oracle_logits(model, inputs, spec):
    return oracle_forward(model, inputs["input_ids"], inputs["attention_mask"],
                          inputs.get("pixel_values"), spec=spec)[0]


def assert_keep_all_is_identity(model, inputs, method, n_visual, **params):
    """Keeping every visual token (by budget and by ratio) gives the unpruned logits: one trace,
    both rewrites (testing/multiplex.py)."""
    from vtp_compile.testing.multiplex import Multiplex
    with torch.no_grad():
        model(**inputs)
        ref = model(**inputs).logits
        keeps = {"budget": {"budget": n_visual}, "ratio": {"ratio": 1.0}}
        mux = Multiplex({k: options(method, **keep, **params) for k, keep in keeps.items()})
        fast = torch.compile(model, backend=mux)
        for k in keeps:
            with mux.select(k):
                got = fast(**inputs).logits
            torch.testing.assert_close(got[valid(inputs)], ref[valid(inputs)], atol=1e-5, rtol=1e-5)
            record_case("keep-all")


def assert_text_only_is_identity(model, spec, opts):
    """A left- and right-padded text-only batch through ``opts`` gives the unpruned logits."""
    from vtp_compile.testing.tiny import make_inputs
    inputs = make_inputs(spec, batch=2, pad=(1, 0), text_only=True)
    with torch.no_grad():
        ref = model(**inputs).logits
    torch._dynamo.reset()
    got = compiled_logits(model, inputs, opts)
    torch.testing.assert_close(got[valid(inputs)], ref[valid(inputs)], atol=1e-5, rtol=1e-5)


def assert_tokens_match(got, want, margins, tol=1e-3):
    """Greedy tokens must agree up to the first step where the oracle had a near tie."""
    for b in range(want.shape[0]):
        for t in range(want.shape[1]):
            if int(got[b, t]) != int(want[b, t]):
                assert float(margins[b, t]) < tol, (
                    f"row {b} step {t}: compiled {got[b].tolist()} vs oracle {want[b].tolist()}")
                break


def assert_cache_holds(cache, inputs, removed, generated):
    """Every layer's cache has one width; row ``b``'s live (unmarked) columns are its real
    prompt tokens minus ``removed[b]`` (an int: every row) plus ``generated`` cached tokens."""
    from vtp_compile.kernels.cache import dead_columns

    assert len({lyr.keys.shape[-2] for lyr in cache.layers}) == 1
    real = inputs["attention_mask"].sum(1).tolist()
    removed = [removed] * len(real) if isinstance(removed, int) else removed
    for lyr in cache.layers:
        comp, _ = dead_columns(lyr.values)
        live = (~comp).sum(1).tolist()
        assert live == [r - x + generated for r, x in zip(real, removed)], (live, real, removed)


def kept_positions(inputs, visual, kept):
    """Real positions whose logits the pruned model defines: text, and the kept visual ones."""
    mask = inputs["attention_mask"].bool() & ~visual
    for b, ks in enumerate(kept):
        mask[b, ks] = True
    return mask


def check_against_mask_oracle(model, inputs, visual, path, opts, pruning, new_tokens=2, backend=None):
    """``path`` "forward": a direct compiled forward's logits at the kept positions; "generate":
    greedy tokens, each against the mask oracle's ``pruning``. ``backend``: compile with it instead
    of ``"vtp"`` with ``opts`` (a ``testing.multiplex.Multiplex``, its configuration selected)."""
    from vtp_compile.testing.oracle_mask import masked_forward, masked_generate
    compile_kw = {"backend": backend} if backend is not None else {"backend": "vtp", "options": opts}
    with torch.no_grad():
        model(**inputs)
        if path == "forward":
            want, kept = masked_forward(model, inputs, visual, pruning)
            got = torch.compile(model, **compile_kw)(**inputs).logits
            keep = kept_positions(inputs, visual, kept)
            torch.testing.assert_close(got[keep], want[keep], atol=3e-5, rtol=1e-4)
        else:
            want, margins, _ = masked_generate(model, inputs, visual, pruning, new_tokens)
            model.compile(**compile_kw)
            try:
                out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
            finally:
                model._compiled_call_impl = None     # the next oracle runs the model eagerly
            assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], want, margins)


def last_report():
    return REPORTS[-1]


__all__ = ["CASES", "record_case", "mask_oracle_logits", "mask_oracle_generate", "compiled_generate", "assert_cache_holds", "assert_keep_all_is_identity", "assert_text_only_is_identity", "options", "oracle_spec", "compiled_logits", "oracle_logits", "oracle_generate",
           "assert_tokens_match", "valid", "last_report"]


# ---- the family-agnostic mask oracle (vtp_compile/testing/oracle_mask.py) --------------------
def _visual(model, inputs):
    return inputs["input_ids"] == model.config.image_token_id


@torch.no_grad()
def mask_oracle_logits(model, inputs, pruning):
    """Logits and kept visual positions of the mask oracle for ``pruning``."""
    from vtp_compile.testing.oracle_mask import masked_forward
    return masked_forward(model, inputs, _visual(model, inputs), pruning)


@torch.no_grad()
def mask_oracle_generate(model, inputs, pruning, n=4):
    """Greedy tokens, top-2 margins and kept positions of the mask oracle for ``pruning``."""
    from vtp_compile.testing.oracle_mask import masked_generate
    return masked_generate(model, inputs, _visual(model, inputs), pruning, n)


@torch.no_grad()
def compiled_generate(model, inputs, opts, n=4):
    """``model.compile(backend="vtp")`` then greedy ``generate``; returns the output object."""
    torch._dynamo.reset()
    model._compiled_call_impl = None
    model(**inputs)
    model.compile(backend="vtp", options=opts)
    return model.generate(**inputs, max_new_tokens=n, do_sample=False, return_dict_in_generate=True)


def check_forward_batches(spec, batches, opts, pruning, model=None, atol=2e-5):
    """Compile ``opts`` once and compare every batch of ``batches`` (make_inputs keywords) with
    the mask oracle's ``pruning``: a static, then a dynamic graph."""
    from vtp_compile.testing.tiny import make_inputs, tiny_llava
    model = model if model is not None else tiny_llava(spec)
    fast = None
    with torch.no_grad():
        for batch in batches:
            inputs = make_inputs(spec, **batch)
            if fast is None:
                model(**inputs)
                fast = torch.compile(model, backend="vtp", options=opts)
            got = fast(**inputs).logits
            want, _ = mask_oracle_logits(model, inputs, pruning)
            torch.testing.assert_close(got[valid(inputs)], want[valid(inputs)], atol=atol, rtol=1e-4)
            record_case("forward/" + (opts.get("inner_backend") or "inductor"))


def check_generate(spec, batch, opts, pruning, n=4, model=None):
    """Greedy ``generate`` through vtp equals the mask oracle's; every cache holds the kept set."""
    from vtp_compile.testing.tiny import make_inputs, tiny_llava
    model = model if model is not None else tiny_llava(spec)
    inputs = make_inputs(spec, **dict(batch, side="left"))
    want, margins, kept = mask_oracle_generate(model, inputs, pruning, n)
    out = compiled_generate(model, inputs, opts, n)
    assert_tokens_match(out.sequences[:, inputs["input_ids"].shape[1]:], want, margins)
    vis = inputs["input_ids"] == model.config.image_token_id
    removed = [int(r.sum()) - len(k) for r, k in zip(vis, kept)]
    assert_cache_holds(out.past_key_values, inputs, removed, n - 1)
    record_case("generate/" + (opts.get("inner_backend") or "inductor"))
