"""Quickstart (``make demo``): what ``backend="vtp"`` does to answers and to prefill time.

1. **Answers.** The project's small LLaVA, trained on generated scenes of coloured shapes
   (``vtp_compile/assets/scene_llava``, 196 visual tokens per image; ``docs/scenes.md``),
   answers ten held-out questions twice: unpruned, and compiled with ``backend="vtp"``
   keeping a quarter of the visual tokens. Both answers are printed side by side with the
   reference answer. This part lowers the rewritten graphs with ``inner_backend="eager"``:
   the same pruned computation, without the minute Inductor would spend compiling the
   prefill and decode graphs of a model this small (part 2 is where Inductor matters).
2. **Prefill time.** A LLaVA-shaped model with random weights, large enough for the ratio to
   mean something (Llama decoder hidden 1024, 4 layers; 576 visual + 40 text tokens), compiled
   twice: Inductor unpruned, and ``backend="vtp"`` (which lowers its rewritten graph with
   Inductor too). Both are timed side by side in interleaved rounds; the FLOP-ratio limit
   (decoder FLOPs unpruned / pruned, from the backend's own report) is printed next to the
   measured speed-up.

    python examples/quickstart.py                      # cdpruner, 49 of 196 / 64 of 576 kept
    python examples/quickstart.py --method fastv --budget 64 --scene-budget 49

Every number printed is measured in this run; nothing is copied from elsewhere.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time

import torch

import vtp_compile

SCENE_TASKS = ("attribute", "counting", "grounding", "ordered", "relations")


@contextlib.contextmanager
def step(what: str):
    """Print ``what ...`` now and its duration when the block ends (the long steps compile)."""
    print(f"  {what} ...", end="", flush=True)
    t0 = time.perf_counter()
    yield
    print(f" {time.perf_counter() - t0:.1f} s", flush=True)


def options_for(method: str, budget: int) -> dict:
    return {"method": method, "budget": budget}


def prefill_sites(reports) -> list:
    """The pruning sites of the last prefill graph the backend compiled for a model
    (``reports``: ``vtp_compile.reports(model)``)."""
    sites = [r.sites for r in reports if r.phase == "prefill" and r.sites]
    if not sites:
        why = [r.skipped for r in reports if r.skipped]
        raise SystemExit(f"vtp left the model unpruned: {why}")
    return sites[-1]


def answers_demo(method: str, budget: int, per_task: int) -> None:
    from vtp_compile.bench.evaluate import generate_answers
    from vtp_compile.scenes import load_scene_model, make_dataset

    print("1. Answers: the shipped scene model, unpruned vs pruned")
    with step("loading the scene model and held-out questions"):
        model, processor = load_scene_model()
        examples = [ex for task in SCENE_TASKS for ex in make_dataset(task, per_task)]
    with step(f"unpruned answers ({len(examples)} questions, eager)"):
        ref = generate_answers(model, processor, examples, batch_size=len(examples))
    pruned = copy.deepcopy(model)
    options = {**options_for(method, budget), "inner_backend": "eager"}
    pruned.compile(backend="vtp", options=options)
    with step(f"pruned answers, model.compile(backend=\"vtp\", options={options}) "
              "(compiles prefill and decode graphs)"):
        out = generate_answers(pruned, processor, examples, batch_size=len(examples))
    site = prefill_sites(vtp_compile.reports(pruned))[-1]
    print(f"  vtp kept {site.kept} of {site.visual_count} visual tokens per image\n")

    w = max(len(ex.question) for ex in examples)
    print(f"  {'question':{w}}  {'reference':18} {'unpruned':18} {method + ' ' + str(budget):18}")
    for ex, a, b in zip(examples, ref, out):
        mark = "" if a.strip() == b.strip() else "   <- differs"
        print(f"  {ex.question:{w}}  {ex.answer:18} {a.strip():18} {b.strip():18}{mark}")
    same = sum(a.strip() == b.strip() for a, b in zip(ref, out))
    right = sum(b.strip() == ex.answer for ex, b in zip(examples, out))
    print(f"  pruned answers equal to the unpruned ones: {same} of {len(examples)}; "
          f"correct: {right} of {len(examples)}\n")


def speed_demo(method: str, budget: int, runs: int) -> None:
    from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

    # 4 layers: the per-token cost that makes the ratio mean something is the width; the depth
    # mostly adds compile time (Inductor compiles each distinct layer's kernels)
    spec = TinySpec(hidden=1024, intermediate=2816, layers=4, heads=16, kv_heads=16,
                    image_size=384, patch=16, vocab=1024, vision_hidden=64, max_positions=2048,
                    seed=0)
    print("2. Prefill time: LLaVA-shaped, random weights, Llama decoder hidden 1024 x 4 layers")
    with step("building the model"):
        model = tiny_llava(spec)
        inputs = make_inputs(spec, prefix=20, suffix=20, seed=0)
        with torch.inference_mode():
            model(**inputs)   # eager once: transformers' output-capture hooks break the first trace
    n_visual = int((inputs["input_ids"] == spec.image_token_id).sum())
    options = options_for(method, budget)
    unpruned = torch.compile(model, backend="inductor")
    pruned = torch.compile(model, backend="vtp", options=options)
    with torch.inference_mode():
        with step("compiling unpruned (torch.compile, backend=\"inductor\")"):
            unpruned(**inputs)
        with step(f"compiling pruned (backend=\"vtp\", options={options})"):
            pruned(**inputs)
    sites = prefill_sites(vtp_compile.reports(pruned))
    total = sites[0].flops_total
    limit = total / (total - sum(s.flops_saved for s in sites))

    models = {"unpruned": unpruned, "vtp": pruned}
    times = {k: [] for k in models}
    with torch.inference_mode():
        for r in range(runs + 1):                    # round 0 warms up, not counted
            print(f"\r  timing: round {r + 1} of {runs + 1}", end="", flush=True)
            for k in (list(models) if r % 2 == 0 else list(models)[::-1]):
                t0 = time.perf_counter()
                models[k](**inputs)
                if r:
                    times[k].append(time.perf_counter() - t0)
    print()
    if "--verbose" in sys.argv:
        print({k: [round(t * 1e3) for t in v] for k, v in times.items()})
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"  prompt {inputs['input_ids'].shape[1]} tokens ({n_visual} visual), batch 1; "
          f"vtp kept {sites[-1].kept} of {sites[0].visual_count}; "
          f"{torch.get_num_threads()} CPU threads; {runs} interleaved rounds")
    print(f"  {'':9} {'median ms':>10} {'fastest ms':>11}")
    for k in models:
        print(f"  {k:9} {med[k] * 1e3:10.1f} {best[k] * 1e3:11.1f}")
    print(f"  speed-up  x{med['unpruned'] / med['vtp']:.2f} (medians), "
          f"x{best['unpruned'] / best['vtp']:.2f} (fastest runs); "
          f"limit x{limit:.2f} (decoder FLOP ratio, unpruned / pruned)")
    print("  (the gap to the limit: the vision tower, projector and LM head, which pruning does "
          "not shorten, and the selection itself; other processes on the machine add noise, "
          "which the fastest runs filter best)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="cdpruner",
                    help=f"one of {', '.join(vtp_compile.available_methods())}")
    ap.add_argument("--scene-budget", type=int, default=49, help="visual tokens kept of 196")
    ap.add_argument("--budget", type=int, default=64, help="visual tokens kept of 576")
    ap.add_argument("--per-task", type=int, default=2, help="scene questions per task")
    ap.add_argument("--runs", type=int, default=5, help="timed prefill rounds")
    ap.add_argument("--skip-answers", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="print every timed run")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    print(f"vtp_compile {vtp_compile.__version__}, torch {torch.__version__}, "
          f"{sys.platform}, {torch.get_num_threads()} threads\n")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    vtp_compile.configure_dynamo()   # one prefill graph (no break at .item()); recompile limit 64
    if not args.skip_answers:
        answers_demo(args.method, args.scene_budget, args.per_task)
    if not args.skip_speed:
        speed_demo(args.method, args.budget, args.runs)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
