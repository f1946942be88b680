"""Prefill time: ``backend="vtp"`` (pruned) vs ``backend="inductor"`` (unpruned) on CPU.

A LLaVA-shaped model sized for a CPU: a Llama decoder (hidden 1024, 8 layers, 16 heads,
intermediate 2816, vocab 1024) behind a tiny CLIP tower (384x384 images, 16x16 patches ->
576 visual tokens; hidden 64, 2 layers), a prompt of 20 + 576 + 20 tokens, batch 1, random
seeded weights. The timed call is the full model forward (vision tower, projector, decoder,
LM head), so everything the backend does in the graph is inside the measurement; the tower
and the small vocab keep the parts that no method prunes (tower, projector, LM head) small,
so the decoder dominates, as it does when image features come in precomputed.

Every configuration is compiled with Inductor (vtp lowers its rewritten graph with Inductor)
and warmed up; then rounds of runs are interleaved (one run of every configuration per round,
in a rotating order) so that load from other processes hits all configurations alike, and the
median over rounds is reported. ``limit`` is the FLOP-ratio bound from the backend's own
report: ``flops_total / (flops_total - flops_saved)`` (decoder FLOPs only).

    python benchmarks/prefill.py                       # fastv (layer 2) + random, budgets 64,144,288
    python benchmarks/prefill.py --json prefill.json --runs 9
    python benchmarks/prefill.py --methods pdrop,sparsevlm,dart,divprune,cdpruner,visionzip,nuwa,chain --budgets 64
    python benchmarks/prefill.py --inductor-config '{"realize_reads_threshold": 4}'   # Inductor's default

Layer-site methods run with their defaults except FastV's ``--layer``; PDrop's ``budget`` is
its average kept count over the decoder layers (as the paper reports it); ``chain`` is
DivPrune to 3x the budget at the encoder, then FastV to the budget at ``--layer``. VisionZip
and Nüwa read the vision tower's internals: they run on a copy of the model with
``vtp_compile.attach`` (same weights; the unpruned baseline runs on the plain model).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
from tqdm import tqdm

import vtp_compile
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

def model_spec(args) -> TinySpec:
    """LLaVA-shaped: a CLIP tower on 384x384 images, 16x16 patches -> 576 visual tokens."""
    return TinySpec(hidden=args.hidden, intermediate=args.intermediate, layers=args.layers,
                    heads=args.heads, kv_heads=args.heads, image_size=384, patch=16, vocab=1024,
                    vision_hidden=64, max_positions=2048, seed=args.seed)


ATTACH = ("visionzip", "nuwa")     # methods that read the vision tower's internals


def method_options(method: str, budget: int, layer: int) -> dict:
    """The benchmarked options of ``method`` at ``budget`` kept visual tokens."""
    if method == "fastv":
        return {"method": "fastv", "budget": budget, "layer": layer}
    if method == "chain":
        return {"method": "chain", "stages": [{"method": "divprune", "budget": 3 * budget},
                                              {"method": "fastv", "budget": budget, "layer": layer}]}
    return {"method": method, "budget": budget}


def interleaved(compiled: dict, inputs: dict, runs: int, warmup: int) -> dict:
    """Per key, the times of ``runs`` calls of ``compiled[key](**inputs)`` after ``warmup``
    untimed rounds; each round calls every configuration once, the order rotated per round."""
    keys = list(compiled)
    times = {k: [] for k in keys}
    rounds = warmup + runs
    with torch.inference_mode(), tqdm(total=rounds * len(keys), desc="time", unit="run",
                                      file=sys.stdout) as bar:
        for r in range(rounds):
            shift = r % len(keys)
            for k in keys[shift:] + keys[:shift]:          # rotate the order every round
                t0 = time.perf_counter()
                compiled[k](**inputs)
                dt = time.perf_counter() - t0
                if r >= warmup:
                    times[k].append(dt)
                bar.update(1)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="prefill time, vtp vs unpruned Inductor (CPU)")
    ap.add_argument("--methods", default="fastv,random,acgr,dstp,alvts")
    ap.add_argument("--budgets", default="64,144,288", help="visual tokens kept (of 576)")
    ap.add_argument("--layer", type=int, default=2, help="FastV pruning layer")
    ap.add_argument("--runs", type=int, default=7, help="timed rounds (median over them)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds after compiling")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--text", type=int, default=20, help="text tokens before and after the image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--inductor-config", default=None,
                    help='every vtp configuration\'s inductor_config option, JSON, e.g. '
                         '\'{"realize_reads_threshold": 4}\' (Inductor\'s default instead of vtp\'s CPU one)')
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    vtp_compile.configure_dynamo()   # one prefill graph per config; all configs share one code object
    from vtp_compile import recording

    t_start = time.perf_counter()
    spec = model_spec(args)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, prefix=args.text, suffix=args.text, seed=args.seed)
    L = inputs["input_ids"].shape[1]
    V = int((inputs["input_ids"] == spec.image_token_id).sum())
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    configs = [("none", None, None)]
    for m in methods:
        for b in budgets:
            opts = method_options(m, b, args.layer)
            if args.inductor_config:
                opts["inductor_config"] = json.loads(args.inductor_config)
            configs.append((m, b, opts))
    attached = None
    if any(m in ATTACH for m in methods):
        import copy
        attached = vtp_compile.attach(copy.deepcopy(model))

    with torch.inference_mode():
        ref_logits = model(**inputs).logits[0, -1].float()   # eager warm-up (output-capture hooks)
        if attached is not None:
            attached(**inputs)

    compiled, rows = {}, []
    for name, budget, opts in tqdm(configs, desc="compile", unit="cfg", file=sys.stdout):
        key = (name, budget)
        if opts is None:
            fn = torch.compile(model, backend="inductor")
        else:
            fn = torch.compile(attached if name in ATTACH else model, backend="vtp", options=opts)
        t0 = time.perf_counter()
        with torch.inference_mode(), recording() as reports:
            out = fn(**inputs).logits
        row = {"method": name, "budget": budget, "compile_s": time.perf_counter() - t0,
               "logits_shape": list(out.shape)}
        last = out[0, -1].float()
        row["max_abs_logit_diff_last"] = float((last - ref_logits).abs().max())
        row["top1_agrees"] = bool(last.argmax() == ref_logits.argmax())
        if opts is not None:
            new = [r for r in reports if r.phase == "prefill"]
            if not new or not new[-1].sites:
                why = [r.skipped for r in reports]
                raise SystemExit(f"vtp did not prune {opts}: reports {why}")
            sites = new[-1].sites
            s = sites[0]
            total = s.flops_total
            saved = sum(x.flops_saved for x in sites)
            row.update(site="encoder" if s.layer is None else f"layer {s.layer}",
                       visual=s.visual_count, kept=sites[-1].kept, reserve=s.reserve,
                       sites=len(sites), flops_total=total,
                       flops_saved=saved, flop_limit=total / (total - saved),
                       kv_bytes_saved=sum(x.kv_bytes_saved for x in sites))
        compiled[key] = fn
        rows.append(row)

    times = interleaved(compiled, inputs, args.runs, args.warmup)

    base_times = times[("none", None)]
    base = statistics.median(base_times)
    for row in rows:
        ts = times[(row["method"], row["budget"])]
        row["median_ms"] = 1e3 * statistics.median(ts)
        row["times_ms"] = [round(1e3 * t, 2) for t in ts]
        row["speedup"] = base / statistics.median(ts)
        # same-round pairs: robust to slow drifts of the machine's load
        row["speedup_paired"] = statistics.median(b / t for b, t in zip(base_times, ts))

    env = {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
           "python": platform.python_version(), "threads": torch.get_num_threads(),
           "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
           "prompt_tokens": L, "visual_tokens": V, "runs": args.runs,
           "decoder": {"hidden": args.hidden, "intermediate": args.intermediate,
                       "layers": args.layers, "heads": args.heads}}

    print(f"\nLLaVA-shaped model: decoder hidden {args.hidden}, {args.layers} layers, "
          f"{args.heads} heads, intermediate {args.intermediate}; prompt {L} tokens "
          f"({V} visual), batch 1; torch {env['torch']}, transformers {env['transformers']}, "
          f"{env['threads']} threads; median of {args.runs} interleaved rounds\n")
    print("| method | budget | site | visual kept | prefill ms (median) | speed-up (ratio of "
          "medians) | speed-up (paired) | FLOP limit | top-1 = unpruned |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row["method"] == "none":
            print(f"| unpruned (inductor) | - | - | {V} / {V} | {row['median_ms']:.1f} | 1.00 | "
                  f"1.00 | 1.00 | - |")
            continue
        kept = f"{row['kept']}+{row['reserve']} reserve" if row.get("reserve") else row["kept"]
        where = row["site"] + (f" (+{row['sites'] - 1} more)" if row.get("sites", 1) > 1 else "")
        print(f"| {row['method']} | {row['budget']} | {where} | {kept} / "
              f"{row['visual']} | {row['median_ms']:.1f} | {row['speedup']:.2f} | "
              f"{row['speedup_paired']:.2f} | {row['flop_limit']:.2f} | "
              f"{'yes' if row['top1_agrees'] else 'no'} |")
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s "
          f"(compile {sum(r['compile_s'] for r in rows):.0f}s)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "args": vars(args), "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
