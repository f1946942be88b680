"""Prefill time on a clip: each video method (and FastV with ``per_frame="even"``) against the
unpruned model, both compiled with Inductor, in one run, next to the FLOP-ratio limit (CPU).

A Qwen2-VL-shaped model sized for a CPU: a decoder of hidden 1024, 4 layers, 16 heads
(intermediate 2816, vocab 256) behind a tiny Qwen2-VL tower (embed 32, 1 block); one prompt of
10 text tokens, a clip of 32 frames at 336x336 (16 temporal patches of 12x12 merged patches:
16 frames of 144 tokens, 2304 visual tokens) and 10 text tokens; batch 1, random seeded weights.
The timed call is the whole forward (tower, splice, decoder, LM head). Rounds are interleaved
(every configuration once per round, the order rotated: ``prefill.interleaved``) and medians
reported; the limit is the decoder FLOP ratio from vtp's own report.

    python benchmarks/video_prefill.py                      # budgets 256 and 576 of 2304
    python benchmarks/video_prefill.py --json video.json --runs 5
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
from prefill import interleaved      # benchmarks/prefill.py, beside this script
from vtp_compile.testing.families import RowSpec, VideoSpec, build_model, make_inputs

METHODS = ("vidcom2", "dycoke", "fastvid", "fastv")


def options(method: str, budget: int, layer: int) -> dict:
    if method == "fastv":
        return {"method": "fastv", "budget": budget, "layer": layer, "per_frame": "even"}
    return {"method": method, "budget": budget}


def build(args):
    heads = args.hidden // 64
    text = dict(hidden_size=args.hidden, intermediate_size=args.intermediate, num_attention_heads=heads, head_dim=64,
                num_key_value_heads=heads, max_position_embeddings=8192,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]})
    vision = dict(depth=1, embed_dim=32, hidden_size=args.hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    model = build_model("qwen2_vl", layers=args.layers, text_config=text, vision_config=vision)
    clip = VideoSpec(args.frames, args.size, args.size)
    return model, make_inputs("qwen2_vl", model, [RowSpec(10, 10, (), (clip,))])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="prefill time on a clip, video methods vs unpruned Inductor")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--budgets", default="256,576", help="visual tokens kept (of 2304)")
    ap.add_argument("--layer", type=int, default=2, help="FastV's pruning layer")
    ap.add_argument("--frames", type=int, default=32, help="video frames (2 per temporal patch)")
    ap.add_argument("--size", type=int, default=336, help="frame side in pixels (14-px patches, merged 2x2)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    vtp_compile.configure_dynamo()
    from vtp_compile import recording

    t_start = time.perf_counter()
    model, inputs = build(args)
    ids = inputs["input_ids"]
    V = int((ids == model.config.video_token_id).sum())
    configs = [("none", None)] + [(m, b) for m in args.methods.split(",") if m
                                  for b in (int(x) for x in args.budgets.split(","))]
    with torch.inference_mode():
        ref = model(**inputs).logits[0, -1].float()
    compiled, rows = {}, []
    for method, budget in tqdm(configs, desc="compile", unit="cfg", file=sys.stdout):
        fn = (torch.compile(model, backend="inductor") if budget is None else
              torch.compile(model, backend="vtp", options=options(method, budget, args.layer)))
        t0 = time.perf_counter()
        with torch.inference_mode(), recording() as reports:
            last = fn(**inputs).logits[0, -1].float()
        row = {"method": method, "budget": budget, "compile_s": time.perf_counter() - t0,
               "top1_agrees": bool(last.argmax() == ref.argmax())}
        if budget is not None:
            sites = [r for r in reports if r.phase == "prefill" and r.sites]
            if not sites:
                raise SystemExit(f"vtp did not prune {method}: {[r.skipped for r in reports]}")
            s = sites[-1].sites
            saved = sum(x.flops_saved for x in s)
            row.update(kept=s[-1].kept, visual=s[0].visual_count,
                       flop_limit=s[0].flops_total / (s[0].flops_total - saved))
        compiled[(method, budget)] = fn
        rows.append(row)

    times = interleaved(compiled, inputs, args.runs, args.warmup)
    base = times[("none", None)]
    for row in rows:
        ts = times[(row["method"], row["budget"])]
        row["median_ms"] = 1e3 * statistics.median(ts)
        row["speedup"] = statistics.median(base) / statistics.median(ts)
        row["speedup_paired"] = statistics.median(b / t for b, t in zip(base, ts))

    env = {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
           "threads": torch.get_num_threads(), "machine": platform.machine(),
           "prompt_tokens": int(ids.shape[1]), "visual_tokens": V, "runs": args.runs}
    print(f"\nQwen2-VL-shaped: decoder hidden {args.hidden}, {args.layers} layers; one clip of "
          f"{args.frames} frames at {args.size}px ({V} visual of {ids.shape[1]} tokens), batch 1; "
          f"torch {env['torch']}, {env['threads']} threads; median of {args.runs} interleaved rounds\n")
    print("| method | budget | visual kept | prefill ms | speed-up | speed-up (paired) | FLOP limit | top-1 = unpruned |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row["budget"] is None:
            print(f"| unpruned (inductor) | - | {V} / {V} | {row['median_ms']:.0f} | 1.00 | 1.00 | 1.00 | - |")
            continue
        name = row["method"] + (" (per_frame even)" if row["method"] == "fastv" else "")
        print(f"| {name} | {row['budget']} | {row['kept']} / {row['visual']} | {row['median_ms']:.0f} | "
              f"{row['speedup']:.2f} | {row['speedup_paired']:.2f} | {row['flop_limit']:.2f} | "
              f"{'yes' if row['top1_agrees'] else 'no'} |")
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s (compile {sum(r['compile_s'] for r in rows):.0f}s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "args": vars(args), "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
