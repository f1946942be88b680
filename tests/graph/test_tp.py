"""Tensor-parallel models (transformers' ``tp_plan="auto"``): two ``gloo`` ranks on CPU prune
exactly as one process does.

The module fixture builds the tiny models, saves them and runs two spawned ranks once per
session (``tp_worker.py``: load sharded, compiled forward and ``generate`` for every method,
batch 2 left-padded; under xdist the first worker to need them spawns, the others read); each
test compares one part of what the ranks saw with the single-process pruned model or the
independent oracles.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch

from vtp_compile.kernels.cache import dead_columns
from vtp_compile.testing import families
from vtp_compile.testing.oracle import OracleSpec, oracle_forward, oracle_generate
from vtp_compile.testing.oracle_mask import Pruning, masked_forward, masked_generate
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import FULL, assert_tokens_match, compiled_logits, options, record_case, valid
from . import tp_worker

pytest.importorskip("accelerate")   # from_pretrained(tp_plan=...) needs it (test extra)

WORLD = 2
FASTV = dict(budget=4, layer=1)
NEW = {"llava": 3, "qwen": 2}       # 3: the prefill, a static and a dynamic decode graph
# every other method once on LLaVA (forward; DSTP's decode-time gathers through generate). CI
# runs one per distinct way a rank could see different values beyond FastV's all-gathered
# queries and keys: rater queries (sparsevlm), a low-rank selector built from all-gathered
# weights (alvts), the vision internals (nuwa), DSTP's decode-time gathers. VTP_TP_ALL=1 (or
# the extended tier, VTP_FULL=1) adds the rest: stages (pdrop) and key norms over every head
# (dart) score from the same gathered keys; an encoder site on replicated features (divprune,
# also on Qwen2.5-VL); acgr scores as fastv; random reads no features; cdpruner's features are
# replicated like divprune's; a chain is its stages; visionzip reads nuwa's internals
# (docs/tensor_parallel.md).
ALL = FULL or bool(os.environ.get("VTP_TP_ALL"))
OTHERS = {
    "sparsevlm": options("sparsevlm", budget=6, recycle=True),
    "alvts": options("alvts", budget=5, layer=1),
}
ATTACHED = {"nuwa": options("nuwa", budget=5)}
QWEN = ["fastv"]
if ALL:
    OTHERS.update({
        "pdrop": options("pdrop", budget=6, layers=[1, 2]),
        "dart": options("dart", budget=5, layer=1),
        "divprune": options("divprune", budget=5),
        "acgr": options("acgr", budget=5, layer=1),
        "random": options("random", budget=5),
        "cdpruner": options("cdpruner", budget=5),
        "chain": options("chain", stages=[{"method": "divprune", "budget": 10},
                                          {"method": "fastv", "budget": 4, "layer": 1}]),
    })
    ATTACHED["visionzip"] = options("visionzip", budget=5)
    QWEN.append("divprune")
DSTP = options("dstp", budget=3, layer=1, tau=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, worker_id):
    spec = TinySpec()
    llava = tiny_llava(spec)              # seeded: every xdist worker builds the same models
    li = make_inputs(spec, rows=[(5, 4, 1), (3, 4, 1)], side="left", seed=1)   # row 1: 2 pads
    qwen = families.build_model("qwen2_5_vl")
    qi = families.make_inputs("qwen2_5_vl", qwen, [families.RowSpec(5, 4), families.RowSpec(3, 4)],
                              padding_side="left")
    if worker_id == "master":
        tmp = tmp_path_factory.mktemp("tp")
        ranks = _spawn(tmp, llava, li, qwen, qi)
    else:   # tests of this module on several xdist workers: the first spawns, the others read
        from filelock import FileLock
        tmp = tmp_path_factory.getbasetemp().parent / "tp"
        with FileLock(str(tmp) + ".lock"):
            ranks = _read(tmp) if (tmp / "done").exists() else _spawn(tmp, llava, li, qwen, qi)
    return dict(ranks=ranks, llava=llava, li=li, qwen=qwen, qi=qi)


def _read(tmp):
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _spawn(tmp, llava, li, qwen, qi):
    tmp.mkdir(parents=True, exist_ok=True)
    llava.save_pretrained(tmp / "llava")
    qwen.save_pretrained(tmp / "qwen")
    fwd = [dict(label=k, options=o, what=("forward",)) for k, o in OTHERS.items()]
    jobs = [dict(name="llava", path=str(tmp / "llava"), inputs=li, runs=[
                dict(label="fastv", options=options("fastv", **FASTV), what=("forward", "generate"),
                     new=NEW["llava"]),
                dict(label="dstp", options=DSTP, what=("generate",), new=NEW["llava"]), *fwd]),
            dict(name="llava", path=str(tmp / "llava"), inputs=li, attach=True,
                 runs=[dict(label=k, options=o, what=("forward",)) for k, o in ATTACHED.items()]),
            dict(name="qwen", path=str(tmp / "qwen"), inputs=qi, runs=[
                dict(label=m, options=options(m, **(FASTV if m == "fastv" else {"budget": 4})),
                     what=("generate",), new=NEW["qwen"]) for m in QWEN])]
    torch.multiprocessing.spawn(tp_worker.run, args=(WORLD, _free_port(), str(tmp), jobs),
                                nprocs=WORLD, join=True)
    (tmp / "done").touch()
    return _read(tmp)


def _pruned(reports, kept="16 -> 4"):
    prefill = [r for r in reports if r[0] == "prefill"]
    return bool(prefill) and all(r[1] is None and r[2] and kept in r[2][0] for r in prefill)


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
        got = res[("llava", "fastv")]["logits"]
        assert _pruned(res[("llava", "fastv")]["reports"]), res[("llava", "fastv")]["reports"]
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
    model._compiled_call_impl = None
    tokens, steps = o.sequences[:, inputs["input_ids"].shape[1]:], torch.stack(o.logits, 1)
    oracle, margins = oracle_generate(model, inputs["input_ids"], inputs["attention_mask"],
                                      inputs["pixel_values"], spec=OracleSpec("fastv", **FASTV),
                                      max_new_tokens=n)[:2]
    L = inputs["input_ids"].shape[1]
    for r, res in enumerate(run["ranks"]):
        got = res[("llava", "fastv")]
        assert torch.equal(got["tokens"], tokens)
        torch.testing.assert_close(got["step_logits"], steps, atol=1e-4, rtol=1e-4)
        for k_tp, lyr in zip(got["keys"], o.past_key_values.layers):
            # this rank's share of the heads of the single-process pruned cache
            h = lyr.keys.shape[1] // WORLD
            assert k_tp.shape[2] == lyr.keys.shape[2] < L + n - 1
            torch.testing.assert_close(k_tp, lyr.keys[:, r * h:(r + 1) * h], atol=1e-5, rtol=1e-5)
    assert_tokens_match(tokens, oracle, margins)
    record_case("tensor-parallel")


@pytest.mark.parametrize("method", QWEN)
def test_qwen2_5_vl_generate_equals_oracle(run, method):
    """M-RoPE; the direct forward is split into several graphs (unpruned, as in one process),
    ``generate`` is pruned (a layer site and an encoder site)."""
    model, inputs = run["qwen"], run["qi"]
    n = NEW["qwen"]
    pruning = Pruning(method, **FASTV) if method == "fastv" else Pruning(method, budget=4)
    visual = families.visual_positions("qwen2_5_vl", model, inputs)
    logits = masked_forward(model, inputs, visual, pruning)[0]
    oracle, margins, _ = masked_generate(model, inputs, visual, pruning, n)
    real = inputs["attention_mask"].sum(1)
    for res in run["ranks"]:
        got = res[("qwen", method)]
        assert _pruned(got["reports"]), got["reports"]
        torch.testing.assert_close(got["step_logits"][:, 0], logits[:, -1], atol=1e-4, rtol=1e-4)
        assert_tokens_match(got["tokens"], oracle, margins)
        for k, v in zip(got["keys"], got["values"]):
            assert k.shape[1] == model.config.text_config.num_key_value_heads // WORLD
            live = (~dead_columns(v)[0]).sum(1)         # 12 of 16 visual tokens left every row
            assert torch.equal(live, real - 12 + n - 1)
    assert torch.equal(run["ranks"][0][("qwen", method)]["tokens"],
                       run["ranks"][1][("qwen", method)]["tokens"])
    record_case("tensor-parallel")


@pytest.mark.parametrize("label", [*OTHERS, *ATTACHED])
def test_other_methods_forward_equals_one_process(run, label):
    """Every rank prunes (the report names a site) and its logits equal one process's."""
    import vtp_compile
    model, inputs, m = run["llava"], run["li"], valid(run["li"])
    opts = {**OTHERS, **ATTACHED}[label]
    torch._dynamo.reset()
    if label in ATTACHED:
        vtp_compile.attach(model)
    try:
        want = compiled_logits(model, inputs, opts)
    finally:
        if label in ATTACHED:
            vtp_compile.detach(model)
    for res in run["ranks"]:
        got = res[("llava", label)]
        assert _pruned(got["reports"], kept=""), got["reports"]
        torch.testing.assert_close(got["logits"][m], want[m], atol=1e-4, rtol=1e-4)
    assert torch.equal(run["ranks"][0][("llava", label)]["logits"],
                       run["ranks"][1][("llava", label)]["logits"])
    record_case("tensor-parallel")


@torch.no_grad()
def test_dstp_generate_equals_one_process(run):
    """DSTP gathers every head at each decode step: tokens, step logits and each rank's
    share of the cache equal one process's."""
    model, inputs = run["llava"], run["li"]
    torch._dynamo.reset()
    model._compiled_call_impl = None
    model.compile(backend="vtp", options=DSTP)
    o = model.generate(**inputs, max_new_tokens=NEW["llava"], do_sample=False,
                       return_dict_in_generate=True, output_logits=True)
    model._compiled_call_impl = None
    tokens, steps = o.sequences[:, inputs["input_ids"].shape[1]:], torch.stack(o.logits, 1)
    for r, res in enumerate(run["ranks"]):
        got = res[("llava", "dstp")]
        assert _pruned(got["reports"], kept=""), got["reports"]
        assert torch.equal(got["tokens"], tokens)
        torch.testing.assert_close(got["step_logits"], steps, atol=1e-4, rtol=1e-4)
        for v_tp, lyr in zip(got["values"], o.past_key_values.layers):
            h = lyr.values.shape[1] // WORLD
            torch.testing.assert_close(v_tp, lyr.values[:, r * h:(r + 1) * h], atol=1e-5, rtol=1e-5)
    record_case("tensor-parallel")
