"""Tensor-parallel models (transformers' ``tp_plan="auto"``): two ``gloo`` ranks on CPU prune
exactly as one process does.

The module fixture builds the tiny models, saves them and runs two spawned ranks once
(``tp_worker.py``: load sharded, compiled forward and ``generate``, batch 2 left-padded); each
test compares one part of what the ranks saw with the single-process pruned model or the
independent oracles.
"""
from __future__ import annotations

import socket

import pytest
import torch

from vtp_compile.kernels.cache import dead_columns
from vtp_compile.testing import families
from vtp_compile.testing.oracle import OracleSpec, oracle_forward, oracle_generate
from vtp_compile.testing.oracle_mask import Pruning, masked_forward, masked_generate
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import assert_tokens_match, compiled_logits, options, record_case, valid
from . import tp_worker

pytest.importorskip("accelerate")   # from_pretrained(tp_plan=...) needs it (test extra)

WORLD = 2
FASTV = dict(budget=4, layer=1)
NEW = {"llava": 3, "qwen": 2}       # 3: the prefill, a static and a dynamic decode graph


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tp")
    spec = TinySpec()
    llava = tiny_llava(spec)
    llava.save_pretrained(tmp / "llava")
    li = make_inputs(spec, rows=[(5, 4, 1), (3, 4, 1)], side="left", seed=1)   # row 1: 2 pads
    qwen = families.build_model("qwen2_5_vl")
    qwen.save_pretrained(tmp / "qwen")
    qi = families.make_inputs("qwen2_5_vl", qwen, [families.RowSpec(5, 4), families.RowSpec(3, 4)],
                              padding_side="left")
    jobs = [dict(name="llava", path=str(tmp / "llava"), inputs=li, options=options("fastv", **FASTV),
                 what=("forward", "generate"), new=NEW["llava"]),
            dict(name="qwen", path=str(tmp / "qwen"), inputs=qi, options=options("fastv", **FASTV),
                 what=("generate",), new=NEW["qwen"])]
    torch.multiprocessing.spawn(tp_worker.run, args=(WORLD, _free_port(), str(tmp), jobs),
                                nprocs=WORLD, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return dict(ranks=ranks, llava=llava, li=li, qwen=qwen, qi=qi)


def _pruned(reports):
    prefill = [r for r in reports if r[0] == "prefill"]
    return bool(prefill) and all(r[1] is None and "16 -> 4" in r[2][0] for r in prefill)


def test_traced_collectives_order_heads_by_rank_and_agree_on_rank_0(run):
    for res in run["ranks"]:
        heads = res["collectives"]["heads"]
        assert heads.shape == (2, WORLD, 3, 4)
        for r in range(WORLD):
            assert torch.equal(heads[:, r], torch.arange(24.).view(2, 3, 4) + 100 * r)
        assert torch.equal(res["collectives"]["agree"], torch.zeros(2, 5))


def test_llava_forward_equals_one_process_and_oracle(run):
    model, inputs, m = run["llava"], run["li"], valid(run["li"])
    want = compiled_logits(model, inputs, options("fastv", **FASTV))
    oracle = oracle_forward(model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                            spec=OracleSpec("fastv", **FASTV))[0]
    for res in run["ranks"]:
        got = res["llava"]["logits"]
        assert _pruned(res["llava"]["reports"]), res["llava"]["reports"]
        torch.testing.assert_close(got[m], want[m], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[m], oracle[m], atol=1e-4, rtol=1e-4)
    record_case("tensor-parallel")


@torch.no_grad()
def test_llava_generate_equals_one_process_and_oracle(run):
    model, inputs = run["llava"], run["li"]
    n = NEW["llava"]
    model.compile(backend="vtp", options=options("fastv", **FASTV))
    o = model.generate(**inputs, max_new_tokens=n, do_sample=False, return_dict_in_generate=True,
                       output_logits=True)
    tokens, steps = o.sequences[:, inputs["input_ids"].shape[1]:], torch.stack(o.logits, 1)
    oracle, margins = oracle_generate(model, inputs["input_ids"], inputs["attention_mask"],
                                      inputs["pixel_values"], spec=OracleSpec("fastv", **FASTV),
                                      max_new_tokens=n)[:2]
    L = inputs["input_ids"].shape[1]
    for r, res in enumerate(run["ranks"]):
        got = res["llava"]
        assert torch.equal(got["tokens"], tokens)
        torch.testing.assert_close(got["step_logits"], steps, atol=1e-4, rtol=1e-4)
        for k_tp, lyr in zip(got["keys"], o.past_key_values.layers):
            # this rank's share of the heads of the single-process pruned cache
            h = lyr.keys.shape[1] // WORLD
            assert k_tp.shape[2] == lyr.keys.shape[2] < L + n - 1
            torch.testing.assert_close(k_tp, lyr.keys[:, r * h:(r + 1) * h], atol=1e-5, rtol=1e-5)
    assert_tokens_match(tokens, oracle, margins)
    record_case("tensor-parallel")


def test_qwen2_5_vl_generate_equals_oracle(run):
    """M-RoPE; the direct forward is split into several graphs (unpruned, as in one process),
    ``generate`` is pruned."""
    model, inputs = run["qwen"], run["qi"]
    n = NEW["qwen"]
    visual = families.visual_positions("qwen2_5_vl", model, inputs)
    logits = masked_forward(model, inputs, visual, Pruning("fastv", **FASTV))[0]
    oracle, margins, _ = masked_generate(model, inputs, visual, Pruning("fastv", **FASTV), n)
    real = inputs["attention_mask"].sum(1)
    for res in run["ranks"]:
        got = res["qwen"]
        assert _pruned(got["reports"]), got["reports"]
        torch.testing.assert_close(got["step_logits"][:, 0], logits[:, -1], atol=1e-4, rtol=1e-4)
        assert_tokens_match(got["tokens"], oracle, margins)
        for k, v in zip(got["keys"], got["values"]):
            assert k.shape[1] == model.config.text_config.num_key_value_heads // WORLD
            live = (~dead_columns(v)[0]).sum(1)         # 12 of 16 visual tokens left every row
            assert torch.equal(live, real - 12 + n - 1)
    assert torch.equal(run["ranks"][0]["qwen"]["tokens"], run["ranks"][1]["qwen"]["tokens"])
    record_case("tensor-parallel")
