"""Tensor-parallel models (transformers' ``tp_plan="auto"``): two ``gloo`` ranks on CPU prune
exactly as one process does.

The parent process builds the tiny models, saves them, and computes the references: the
single-process pruned model (forward logits, greedy tokens, every step's logits, its KV cache)
and the independent oracles. Two spawned ranks (``tp_worker.py``) load the saved model sharded
and run the same compiled forward and ``generate``.
"""
from __future__ import annotations

import socket

import pytest
import torch

from vtp_compile.testing import families
from vtp_compile.testing.oracle import OracleSpec, oracle_forward, oracle_generate
from vtp_compile.testing.oracle_mask import Pruning, masked_generate
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import assert_tokens_match, compiled_logits, options, record_case, valid
from . import tp_worker

pytest.importorskip("accelerate")   # from_pretrained(tp_plan=...) needs it (test extra)

WORLD = 2
NEW = 3
FASTV = dict(budget=4, layer=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out, jobs):
    torch.multiprocessing.spawn(tp_worker.run, args=(WORLD, _free_port(), str(out), jobs),
                                nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@torch.no_grad()
def _single_process(model, inputs, opts, forward=True):
    """The pruned model in one process: forward logits, greedy tokens, step logits, cache."""
    ref = {}
    if forward:
        ref["logits"] = compiled_logits(model, inputs, opts)
        torch._dynamo.reset()
    model.compile(backend="vtp", options=opts)
    o = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True,
                       output_logits=True)
    ref["tokens"] = o.sequences[:, inputs["input_ids"].shape[1]:]
    ref["step_logits"] = torch.stack(o.logits, 1)
    ref["keys"] = [lyr.keys for lyr in o.past_key_values.layers]
    return ref


def _check_generate(ranks, name, ref, inputs):
    L = inputs["input_ids"].shape[1]
    for got in (r[name] for r in ranks):
        assert torch.equal(got["tokens"], ref["tokens"])
        torch.testing.assert_close(got["step_logits"], ref["step_logits"], atol=1e-4, rtol=1e-4)
    for r, res in enumerate(ranks):
        for k_tp, k_one in zip(res[name]["keys"], ref["keys"]):
            # this rank's share of the heads of the single-process pruned cache: same (pruned)
            # length, 1/WORLD of the heads
            h = k_one.shape[1] // WORLD
            assert k_tp.shape[2] == k_one.shape[2] < L + NEW - 1
            torch.testing.assert_close(k_tp, k_one[:, r * h:(r + 1) * h], atol=1e-5, rtol=1e-5)


def test_tensor_parallel_llava_and_qwen2_5_vl_equal_one_process(tmp_path):
    """LLaVA (FastV: forward and generate; DivPrune: forward) and Qwen2.5-VL (FastV, M-RoPE:
    generate), batch 2 with left padding, 2 ranks."""
    spec = TinySpec()
    llava = tiny_llava(spec)
    llava.save_pretrained(tmp_path / "llava")
    li = make_inputs(spec, rows=[(5, 4, 1), (3, 4, 1)], side="left", seed=1)   # row 1: 2 pads
    qwen = families.build_model("qwen2_5_vl")
    qwen.save_pretrained(tmp_path / "qwen")
    rows = [families.RowSpec(5, 4), families.RowSpec(3, 4)]
    qi = families.make_inputs("qwen2_5_vl", qwen, rows, padding_side="left")
    fastv, divprune = options("fastv", **FASTV), options("divprune", budget=4)

    # references, one process: the compiled pruned model and the oracles
    want_oracle = oracle_forward(llava, li["input_ids"], li["attention_mask"], li["pixel_values"],
                                 spec=OracleSpec("fastv", **FASTV))[0]
    tok_oracle, margins = oracle_generate(llava, li["input_ids"], li["attention_mask"], li["pixel_values"],
                                          spec=OracleSpec("fastv", **FASTV), max_new_tokens=NEW)[:2]
    visual = families.visual_positions("qwen2_5_vl", qwen, qi)
    qtok_oracle, qmargins, _ = masked_generate(qwen, qi, visual, Pruning("fastv", **FASTV), NEW)
    want_div = compiled_logits(llava, li, divprune)
    torch._dynamo.reset()
    want = _single_process(llava, li, fastv)
    torch._dynamo.reset()
    qwant = _single_process(qwen, qi, options("fastv", **FASTV), forward=False)
    torch._dynamo.reset()

    ranks = _spawn(tmp_path, [
        dict(name="llava", path=str(tmp_path / "llava"), inputs=li, options=fastv,
             what=("forward", "generate"), new=NEW),
        dict(name="divprune", path=str(tmp_path / "llava"), inputs=li, options=divprune,
             what=("forward",), new=NEW),
        dict(name="qwen", path=str(tmp_path / "qwen"), inputs=qi, options=options("fastv", **FASTV),
             what=("generate",), new=NEW)])

    # the traced collectives: heads in rank order, every rank adopts rank 0's scores
    for res in ranks:
        heads = res["collectives"]["heads"]
        assert heads.shape == (2, WORLD, 3, 4)
        for r in range(WORLD):
            assert torch.equal(heads[:, r], torch.arange(24.).view(2, 3, 4) + 100 * r)
        assert torch.equal(res["collectives"]["agree"], torch.zeros(2, 5))

    m = valid(li)
    for res in ranks:
        for job in ("llava", "divprune", "qwen"):
            prefill = [r for r in res[job]["reports"] if r[0] == "prefill"]
            assert prefill and all(r[1] is None and "16 -> 4" in r[2][0] for r in prefill), res[job]["reports"]
        got = res["llava"]["logits"]
        torch.testing.assert_close(got[m], want["logits"][m], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[m], want_oracle[m], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(res["divprune"]["logits"][m], want_div[m], atol=1e-4, rtol=1e-4)
    _check_generate(ranks, "llava", want, li)
    assert_tokens_match(ranks[0]["llava"]["tokens"], tok_oracle, margins)
    _check_generate(ranks, "qwen", qwant, qi)
    assert_tokens_match(ranks[0]["qwen"]["tokens"], qtok_oracle, qmargins)
    record_case("tensor-parallel", 3)
