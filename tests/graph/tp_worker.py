"""One rank of a tensor-parallel run (``torch.multiprocessing.spawn`` from ``test_tp.py``).

Each rank joins a ``gloo`` group, loads the saved tiny model with ``tp_plan="auto"`` and runs
the jobs it is given; every rank writes what it saw to ``<out>/rank<r>.pt`` for the test to
compare with the single-process pruned model and the oracle.
"""
from __future__ import annotations

import os
import warnings
from datetime import timedelta

import torch


def _load(path: str):
    from transformers import AutoModelForImageTextToText
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # tp_plan= is deprecated in favour of distributed_config
        m = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, tp_plan="auto")
    return m.eval()


def collectives(world: int) -> dict:
    """The traced helpers on a real group: head order and agreement."""
    import torch.distributed as dist
    from vtp_compile.graph import tp
    r, name = dist.get_rank(), dist.group.WORLD.group_name
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4) + 100 * r     # [B, 1 head, L, D]
    return {"heads": tp.gather_heads(x, world, name),
            "agree": tp.agree(torch.full((2, 5), float(r)), world, name)}


def _one(m, inputs, run_: dict) -> dict:
    """One compiled forward and/or ``generate`` with ``run_["options"]``: what the rank saw."""
    from vtp_compile import recording
    got = {}
    m._compiled_call_impl = None                      # drop a previous run's m.compile(...)
    with torch.no_grad(), recording() as reports:
        m(**inputs)                                   # eager warm-up
        if "forward" in run_["what"]:
            got["logits"] = torch.compile(m, backend="vtp", options=run_["options"])(**inputs).logits
        if "generate" in run_["what"]:
            torch._dynamo.reset()
            m.compile(backend="vtp", options=run_["options"])
            o = m.generate(**inputs, max_new_tokens=run_["new"], do_sample=False,
                           return_dict_in_generate=True, output_logits=True)
            got["tokens"] = o.sequences[:, inputs["input_ids"].shape[1]:]
            got["step_logits"] = torch.stack(o.logits, 1)
            got["keys"] = [lyr.keys.clone() for lyr in o.past_key_values.layers]
            got["values"] = [lyr.values.clone() for lyr in o.past_key_values.layers]
    got["reports"] = [(r.phase, r.skipped, [s.line() for s in r.sites]) for r in reports]
    return got


def run(rank: int, world: int, port: int, out: str, jobs: list) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    # a rank that fails leaves the others waiting in a collective: fail them soon too
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=180))
    torch._dynamo.config.capture_scalar_outputs = True
    torch._dynamo.config.recompile_limit = 64
    res = {"collectives": collectives(world)}
    for job in jobs:
        m = _load(job["path"])
        if job.get("attach"):
            import vtp_compile
            vtp_compile.attach(m)
        inputs = job["inputs"]
        for run_ in job["runs"]:
            torch._dynamo.reset()
            res[(job["name"], run_["label"])] = _one(m, inputs, run_)
    torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
