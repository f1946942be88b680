"""vLLM serving, pruned (vtp's vLLM plugin) vs unpruned, in one engine and one run.

One engine serves every configuration: the unpruned requests carry no ``vtp`` options, the
pruned ones carry ``mm_processor_kwargs={"vtp": {...}}`` (a request's own options), so both
run with the same weights, warm-up, scheduler and KV cache. Every request has its own image
(no prefix- or encoder-cache hit between requests).

* **TTFT**: requests one at a time with ``max_tokens=1``; the time from ``generate`` to its
  return (processor, vision tower, selection, prefill, one sampled token). Median over
  ``--ttft-requests`` requests per configuration, configurations interleaved per round.
* **requests/s**: ``--requests`` requests submitted together (continuous batching) with
  ``max_tokens=--max-tokens``; requests divided by wall time.
* **limit**: the FLOP-ratio bound of the language model's prefill,
  ``flops(unpruned) / flops(pruned)`` for the prompt lengths served (linears + attention,
  :class:`vtp_compile.passes.flops.LayerCost`); the vision tower runs on every token in both
  and is left out, so the end-to-end bound is lower.

Model: by default a random-weight LLaVA-shaped model at CPU scale
(:data:`vtp_compile.testing.vllm_models.LLAVA_576`: CLIP tower on 336 px images with 14 px
patches -> 576 visual tokens, hidden 128, 4 layers; Llama decoder hidden 1024, 8 layers, 16
heads, MLP 2816, as in benchmarks/prefill.py), saved to a temporary directory. ``--model PATH`` serves any LLaVA checkpoint instead (e.g. llava-hf/llava-1.5-7b-hf
on a GPU build of vLLM; then also give ``--dtype auto`` and drop ``--kv-cache-mb``).

    python benchmarks/vllm_serving.py --json vllm_serving.json
    python benchmarks/vllm_serving.py --model /models/llava-1.5-7b-hf --dtype auto --kv-cache-mb 0 \\
        --requests 64 --ttft-requests 16 --budgets 64,144
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def lm_flops(cfg, lengths: list[int]) -> int:
    from vtp_compile.passes.flops import LayerCost
    t = cfg.text_config
    h, heads = t.hidden_size, t.num_attention_heads
    hd = getattr(t, "head_dim", None) or h // heads
    kv = getattr(t, "num_key_value_heads", heads)
    params = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * t.intermediate_size
    cost = LayerCost(linear_params=params, attn_width=heads * hd, kv_width=2 * kv * hd)
    return sum(t.num_hidden_layers * cost.flops(L, L) for L in lengths)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a LLaVA checkpoint dir (default: the CPU-scale random model)")
    ap.add_argument("--method", default="divprune", help="an encoder-site method (default divprune)")
    ap.add_argument("--budgets", default="64,144", help="visual tokens kept per image, comma-separated")
    ap.add_argument("--requests", type=int, default=16, help="requests in the throughput batch")
    ap.add_argument("--ttft-requests", type=int, default=6, help="single requests per configuration for TTFT")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--kv-cache-mb", type=int, default=512, help="KV cache size (CPU); 0: vLLM's default")
    ap.add_argument("--compile", action="store_true", help="let vLLM compile the model (default: eager)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from vllm import LLM, SamplingParams
    from vtp_compile.scenes import make_dataset
    from vtp_compile.serving.vllm import options

    path = args.model
    if path is None:
        from vtp_compile.testing.vllm_models import LLAVA_576, build, save
        path = tempfile.mkdtemp(prefix="vtp_vllm_bench_")
        save(*build(LLAVA_576), path)
    budgets = [int(b) for b in args.budgets.split(",") if b]
    configs = [("unpruned", None)] + [(f"{args.method}@{b}", {"method": args.method, "budget": b})
                                       for b in budgets]
    for _, o in configs[1:]:
        options.parse(o)
    kw = dict(dtype=args.dtype, max_model_len=2048, max_num_seqs=max(args.requests, 8), seed=0,
              enforce_eager=not args.compile, limit_mm_per_prompt={"image": 1})
    if args.kv_cache_mb:
        kw["kv_cache_memory_bytes"] = args.kv_cache_mb << 20
    t0 = time.perf_counter()
    llm = LLM(path, **kw)
    startup = time.perf_counter() - t0
    hf_cfg = llm.llm_engine.vllm_config.model_config.hf_config

    n_img = len(configs) * (args.ttft_requests + 1) + len(configs) * args.requests + 2
    exs = make_dataset("attribute", n=n_img)
    it = iter(exs)

    def req(opts):
        ex = next(it)
        r = {"prompt": "<image> " + ex.question, "multi_modal_data": {"image": ex.image}}
        if opts:
            r["mm_processor_kwargs"] = {"vtp": opts}
        return r

    one = SamplingParams(temperature=0.0, max_tokens=1)
    many = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    # warm-up: every configuration once
    for _, o in configs:
        llm.generate([req(o)], one, use_tqdm=False)
    ttft = {name: [] for name, _ in configs}
    plen = {}
    for r in range(args.ttft_requests):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        for name, o in order:
            t = time.perf_counter()
            out = llm.generate([req(o)], one, use_tqdm=False)[0]
            ttft[name].append(time.perf_counter() - t)
            plen[name] = len(out.prompt_token_ids)
    tput = {}
    for name, o in configs:
        batch = [req(o) for _ in range(args.requests)]
        t = time.perf_counter()
        llm.generate(batch, many, use_tqdm=False)
        tput[name] = args.requests / (time.perf_counter() - t)

    base = configs[0][0]
    rows = []
    for name, _ in configs:
        rows.append({
            "config": name, "prompt_tokens": plen[name],
            "ttft_ms": 1000 * statistics.median(ttft[name]),
            "ttft_speedup": statistics.median(ttft[base]) / statistics.median(ttft[name]),
            "req_per_s": tput[name], "throughput_speedup": tput[name] / tput[base],
            "lm_flop_limit": lm_flops(hf_cfg, [plen[base]]) / lm_flops(hf_cfg, [plen[name]]),
        })
    import platform

    import torch
    import vllm
    meta = {"vllm": vllm.__version__, "torch": torch.__version__, "model": args.model or "LLAVA_576 (random)",
            "device": "cuda" if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads)", "startup_s": round(startup, 1),
            "requests": args.requests, "ttft_requests": args.ttft_requests, "max_tokens": args.max_tokens,
            "compile": args.compile}
    print(json.dumps(meta))
    print(f"{'config':<16}{'prompt':>7}{'TTFT ms':>10}{'x':>7}{'req/s':>9}{'x':>7}{'LM FLOP limit':>15}")
    for r in rows:
        print(f"{r['config']:<16}{r['prompt_tokens']:>7}{r['ttft_ms']:>10.1f}{r['ttft_speedup']:>7.2f}"
              f"{r['req_per_s']:>9.2f}{r['throughput_speedup']:>7.2f}{r['lm_flop_limit']:>15.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":     # vLLM spawns its workers: the guard is required
    main()
