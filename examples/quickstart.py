"""Quickstart: prune visual tokens inside a compiled LLaVA graph with ``backend="vtp"``.

Builds a tiny LLaVA with random (seeded) weights, compiles one copy with plain Inductor (no
pruning) and one with the ``vtp`` backend, then compares:

* visual tokens kept at each pruning site (from ``vtp_compile.reports(model)``),
* last-position logits (max abs difference, top-1 agreement),
* KV-cache bytes after ``generate`` (the pruned prefill leaves a compacted cache),
* prefill time, both compiled and warm, measured side by side (median of interleaved runs).

    python examples/quickstart.py --method fastv --budget 16 --layer 2

Random weights: the logits difference only shows that the pruned graph runs and stays close;
it says nothing about accuracy on real images.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import vtp_compile
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

# a small LLaVA: CLIP tower on 64x64 images with 8x8 patches -> 64 visual tokens
SPEC = TinySpec(hidden=128, intermediate=352, layers=4, heads=4, kv_heads=2, image_size=64,
                patch=8, vocab=256, vision_hidden=64, seed=0)


def kv_cache_bytes(cache) -> int:
    """Bytes held by a transformers ``DynamicCache`` (keys + values over all layers)."""
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            if t is not None:
                total += t.numel() * t.element_size()
    return total


def median_prefill_seconds(models: dict, inputs: dict, runs: int) -> dict:
    """Interleaved timing of each model's forward (prefill), median over ``runs`` rounds."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(runs):
            for name, m in models.items():
                t0 = time.perf_counter()
                m(**inputs)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="fastv",
                    help=f"one of {', '.join(vtp_compile.available_methods())}")
    ap.add_argument("--budget", type=int, default=16, help="visual tokens kept (of 64)")
    ap.add_argument("--layer", type=int, default=2, help="FastV: prune before this decoder layer")
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--runs", type=int, default=15, help="timed prefill rounds")
    args = ap.parse_args(argv)
    start = time.perf_counter()

    vtp_compile.configure_dynamo()   # one prefill graph, no break at .item(); recompile limit 64

    base = tiny_llava(SPEC)
    inputs = make_inputs(SPEC, prefix=5, suffix=11, seed=0)
    n_visual = int((inputs["input_ids"] == SPEC.image_token_id).sum())
    print(f"tiny LLaVA: {base.config.text_config.num_hidden_layers} decoder layers, "
          f"prompt {inputs['input_ids'].shape[1]} tokens of which {n_visual} visual")

    options = {"method": args.method, "budget": args.budget}
    if args.method == "fastv":
        options["layer"] = args.layer

    with torch.inference_mode():
        base(**inputs)         # eager warm-up: transformers' output-capture hooks would
                               # otherwise break the graph on the first call
    ref = copy.deepcopy(base)
    vtp = copy.deepcopy(base)
    ref.compile(backend="inductor")
    vtp.compile(backend="vtp", options=options)

    # ---- prefill: logits -------------------------------------------------------------------
    t0 = time.perf_counter()
    with torch.inference_mode():
        out_ref = ref(**inputs)
        out_vtp = vtp(**inputs)
    REPORTS = vtp_compile.reports(vtp)
    print(f"compiled both prefill graphs in {time.perf_counter() - t0:.1f}s")
    if not REPORTS:
        raise SystemExit("the vtp backend was not called (graph break or cached graph?)")
    prefill_reports = [r for r in REPORTS if r.phase == "prefill"]
    print(f"\nvtp options: {options}")
    if not prefill_reports or not prefill_reports[-1].sites:
        skipped = [r.skipped for r in REPORTS if r.skipped]
        print(f"  no pruning site was applied {skipped or ''}")
    for r in prefill_reports:
        for s in r.sites:
            where = "encoder (before layer 0)" if s.layer is None else f"before layer {s.layer}"
            print(f"  site {s.name} {where}: visual tokens {s.visual_count} -> {s.kept}; "
                  f"decoder FLOPs -{100.0 * s.flops_saved / max(1, s.flops_total):.1f}%")

    a, b = out_ref.logits[0, -1].float(), out_vtp.logits[0, -1].float()
    print(f"\nlogits shape: unpruned {tuple(out_ref.logits.shape)}, vtp {tuple(out_vtp.logits.shape)}")
    print(f"last position: max |logit diff| = {(a - b).abs().max().item():.4f}, "
          f"top-1 {'agrees' if a.argmax() == b.argmax() else 'differs'} "
          f"({a.argmax().item()} vs {b.argmax().item()})")

    # ---- prefill time ------------------------------------------------------------------------
    median_prefill_seconds({"unpruned": ref, "vtp": vtp}, inputs, runs=2)   # warm
    med = median_prefill_seconds({"unpruned": ref, "vtp": vtp}, inputs, runs=args.runs)
    print(f"\nprefill (compiled, warm, median of {args.runs} interleaved runs, "
          f"{torch.get_num_threads()} threads): unpruned {med['unpruned'] * 1e3:.2f} ms, "
          f"vtp {med['vtp'] * 1e3:.2f} ms -> speed-up x{med['unpruned'] / med['vtp']:.2f}")
    print("  (a toy model: fixed per-call overheads dominate, so the speed-up is small here; "
          "see benchmarks/prefill.py for a LLaVA-sized decoder)")

    # ---- generate: KV cache ------------------------------------------------------------------
    # The unpruned reference generates eagerly: Inductor without pruning leaves exactly the same
    # cache, and compiling its generate graphs (prefill-with-cache + decode) would only add
    # compile time. The vtp model's generate is compiled (pruned prefill, compacted cache).
    gen = dict(max_new_tokens=args.new_tokens, do_sample=False, return_dict_in_generate=True)
    with torch.inference_mode():
        g_ref = base.generate(**inputs, **gen)
        g_vtp = vtp.generate(**inputs, **gen)
    # transformers >= 5.24 names the generate output's cache `cache` (`past_key_values` warns)
    cache_of = lambda out: out["cache"] if "cache" in out else out.past_key_values
    kv_ref, kv_vtp = kv_cache_bytes(cache_of(g_ref)), kv_cache_bytes(cache_of(g_vtp))
    new_ref = g_ref.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    new_vtp = g_vtp.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    print(f"\ngenerate({args.new_tokens} tokens): KV cache unpruned {kv_ref / 1024:.1f} KiB, "
          f"vtp {kv_vtp / 1024:.1f} KiB ({100.0 * (1 - kv_vtp / kv_ref):.1f}% smaller)")
    print(f"  tokens unpruned {new_ref}\n  tokens vtp      {new_vtp}")

    REPORTS = vtp_compile.reports(vtp)
    print(f"\nvtp compiled {len(REPORTS)} graph(s): " + ", ".join(r.phase for r in REPORTS))

    print(f"\ntotal {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
