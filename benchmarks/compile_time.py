"""First-compile time: ``backend="vtp"`` against ``backend="inductor"`` on the same model, side by side
in one process.

The model is the LLaVA-shaped one of ``benchmarks/prefill.py`` (Llama decoder hidden 1024, 8 layers,
16 heads, intermediate 2816, vocab 1024, behind a tiny CLIP tower on 384x384 images -> 576 visual
tokens), prompt 20 + 576 + 20 = 616 tokens, batch 1, a direct ``model(**inputs)`` forward, fp32.

Each measurement compiles a fresh ``torch.compile`` of the model after ``torch._dynamo.reset()``
inside ``torch._inductor.utils.fresh_cache()`` (an empty Inductor cache directory, in-memory code
caches cleared): nothing compiled before is reused. Its ``first call`` is the wall time of the first
forward (trace + vtp's passes + Inductor + the C++ compiler + one run); ``compile`` is that minus a
steady forward of the same configuration. The configurations alternate (round ``r`` runs them in
an order rotated by ``r``), an untimed warm-up compile of a small model first pays the one-time
imports, and the medians over rounds are reported with the ratio of each configuration's compile
time to Inductor's (paired per round, then the median).

After the timed calls, each configuration runs two other prompt lengths and the graphs Dynamo
compiled for them are counted (``torch._dynamo.utils.counters["stats"]["unique_graphs"]``): vtp
should compile no more graphs for them than Inductor alone does.

``--threads`` (1) is ``torch.set_num_threads``; Inductor's ``compile_threads`` (how many C++
kernels it compiles at once) is left at Inductor's default unless ``--compile-threads`` is given.

    python benchmarks/compile_time.py                      # full model, fastv, 2 rounds, 1 thread
    python benchmarks/compile_time.py --compile-threads 1  # every C++ compile in turn, in-process
    python benchmarks/compile_time.py --methods fastv,divprune,pdrop --rounds 3
    python benchmarks/compile_time.py --quick              # hidden 256 x 2 layers, 144 visual
    python benchmarks/compile_time.py --breakdown          # where each compile's time went
    python benchmarks/compile_time.py --by-hand            # + Inductor on FastV written by hand

``--by-hand`` adds ``fastv-by-hand``: Inductor alone compiling ``benchmarks/fastv_by_hand.py``, the
same pruned prefill written in the model's own code (layers before the site at the prompt length,
the rest at a static kept width). It is the floor for compiling a graph whose layers run at two
widths; its row shows how much of vtp's ratio is that, and how much is vtp's own.

``--breakdown`` prints each run's seconds by phase (from ``torch._dynamo.utils.compile_times()``):
Dynamo's trace, vtp's passes (``PassManager.__call__``), AOT autograd's trace, Inductor's Python
side (lowering, scheduling, codegen), and compiling + loading the C++ kernels. Every run prints the
C++ kernels Inductor compiled and the CPU time of this process and of the C++ compiler (its child
processes), which are less sensitive to other load than wall time; the summary pairs those too.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

import vtp_compile
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava


def model_spec(args) -> TinySpec:
    return TinySpec(hidden=args.hidden, intermediate=args.intermediate, layers=args.layers,
                    heads=args.heads, kv_heads=args.heads, image_size=args.image_size, patch=16,
                    vocab=1024, vision_hidden=64, max_positions=2048, seed=0)


def method_options(method: str, budget: int, layer: int) -> dict | None:
    if method in ("inductor", "none"):
        return None
    if method == "fastv":
        return {"method": "fastv", "budget": budget, "layer": layer}
    return {"method": method, "budget": budget}


def _graphs() -> int:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def _child_cpu() -> float:
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return c.ru_utime + c.ru_stime


def _self_cpu() -> float:
    c = resource.getrusage(resource.RUSAGE_SELF)
    return c.ru_utime + c.ru_stime


class _Counters:
    """Wall time inside vtp's pass manager, and the C++ kernels Inductor had compiled."""

    def __init__(self):
        self.vtp_s = 0.0
        self.kernels = 0
        self.sources = []                       # each C++ kernel's source, in compile order

    @contextlib.contextmanager
    def installed(self):
        from torch._inductor.async_compile import AsyncCompile
        from vtp_compile.passes import manager

        old_pm, old_cpp = manager.PassManager.__call__, AsyncCompile.cpp_pybinding

        def passes(pm, *a, **k):
            t0 = time.perf_counter()
            try:
                return old_pm(pm, *a, **k)
            finally:
                self.vtp_s += time.perf_counter() - t0

        def cpp(ac, argtypes, source_code, *a, **k):
            self.kernels += 1
            self.sources.append(source_code)
            return old_cpp(ac, argtypes, source_code, *a, **k)
        manager.PassManager.__call__, AsyncCompile.cpp_pybinding = passes, cpp
        try:
            yield self
        finally:
            manager.PassManager.__call__, AsyncCompile.cpp_pybinding = old_pm, old_cpp


def _breakdown(m: dict, vtp_s: float) -> dict:
    """Seconds of the first call by phase, from ``torch._dynamo.utils.compilation_time_metrics``."""
    total = m.get("_compile.compile_inner", 0.0)
    backend = m.get("OutputGraph.call_user_compiler", 0.0)
    aot = m.get("create_aot_dispatcher_function", 0.0)
    fw = m.get("compile_fx.<locals>.fw_compiler_base", 0.0)
    cxx = m.get("PyCodeCache.load_by_key_path", 0.0)
    return {"dynamo": total - backend, "vtp_passes": vtp_s, "aot": aot - fw,
            "inductor_python": fw - cxx, "cxx_compile_and_load": cxx,
            "scheduler": m.get("Scheduler.__init__", 0.0) + m.get("Scheduler.codegen", 0.0)}


def _dynamic_length(inputs: dict) -> dict:
    """Copies of ``inputs`` whose prompt length Dynamo treats as dynamic on the first call."""
    out = {k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
    for name in ("input_ids", "attention_mask"):
        torch._dynamo.mark_dynamic(out[name], 1)
    return out


def measure(model, inputs, label: str, options: dict | None, other_inputs,
            kernel_dir: str | None = None) -> dict:
    """One fresh first compile of ``model`` for one configuration (``options`` None: Inductor
    alone)."""
    from torch._inductor.utils import fresh_cache
    torch._dynamo.reset()
    torch._dynamo.utils.compilation_time_metrics.clear()
    count = _Counters()
    row = {"config": label}
    with fresh_cache(), count.installed(), torch.inference_mode():
        fn = (torch.compile(model, backend="inductor") if options is None
              else torch.compile(model, backend="vtp", options=options))
        g0, c0, s0 = _graphs(), _child_cpu(), _self_cpu()
        t0 = time.perf_counter()
        fn(**inputs)
        first = time.perf_counter() - t0
        row["graphs_first"] = _graphs() - g0
        row["cc_cpu_s"] = _child_cpu() - c0     # C++ compiler CPU (children that exited: compile_threads 1)
        row["self_cpu_s"] = _self_cpu() - s0    # this process (Dynamo, vtp, Inductor, one run)
        row["kernels"] = count.kernels          # C++ kernels compiled (a fresh cache: every one)
        # kernels whose loops take a size argument (``ks0``: the compacted width), not constants
        row["kernels_symbolic"] = sum("ks0" in src for src in count.sources)
        if kernel_dir:
            d = Path(kernel_dir) / label
            d.mkdir(parents=True, exist_ok=True)
            for i, src in enumerate(count.sources):
                (d / f"k{i:02d}.cpp").write_text(src)
        metrics = {k: sum(v) for k, v in torch._dynamo.utils.compilation_time_metrics.items()}
        row["phases_s"] = _breakdown(metrics, count.vtp_s)
        t0 = time.perf_counter()
        fn(**inputs)
        steady = time.perf_counter() - t0
        row.update(first_call_s=first, steady_s=steady, compile_s=first - steady)
        g1 = _graphs()
        for x in other_inputs:
            fn(**x)
        row["graphs_new_lengths"] = _graphs() - g1
    torch._dynamo.reset()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="first-compile time, vtp vs Inductor alone (CPU)")
    ap.add_argument("--methods", default="fastv",
                    help="vtp methods compared with Inductor alone (comma list)")
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--layer", type=int, default=2, help="FastV's pruning layer")
    ap.add_argument("--rounds", type=int, default=None, help="default 2 (--quick: 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile-threads", type=int, default=None,
                    help="torch._inductor.config.compile_threads (default: Inductor's own choice, "
                         "what a user gets; 1: every C++ compile in turn, in this process)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=384, help="16x16 patches: 384 -> 576 visual")
    ap.add_argument("--text", type=int, default=20, help="text tokens before and after the image")
    ap.add_argument("--quick", action="store_true",
                    help="a small model (hidden 256 x 2 layers, 144 visual, budget 16), 1 round")
    ap.add_argument("--breakdown", action="store_true", help="print each run's time by phase")
    ap.add_argument("--no-lengths", action="store_true", help="skip the recompile check")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up compiles")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--dynamic", action="store_true",
                    help="mark the prompt length dynamic from the first call (one graph for every "
                         "length, as after Dynamo's automatic-dynamic recompile)")
    ap.add_argument("--kernels", metavar="DIR",
                    help="write each configuration's C++ kernel sources to DIR/<config>/ (last round)")
    ap.add_argument("--by-hand", action="store_true",
                    help="also compile FastV written by hand (benchmarks/fastv_by_hand.py) with "
                         "Inductor alone: the floor for a graph whose layers run at two widths")
    ap.add_argument("--inductor-config", default=None,
                    help='vtp\'s inductor_config option, JSON, e.g. \'{"reorder_for_peak_memory": true}\'')
    args = ap.parse_args(argv)
    if args.quick:
        args.hidden, args.intermediate, args.layers, args.heads = 256, 704, 2, 4
        args.image_size, args.budget, args.layer = 192, 16, 1
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2

    torch.set_num_threads(args.threads)
    import torch._inductor.config as ic
    if args.compile_threads is not None:
        ic.compile_threads = args.compile_threads
    args.compile_threads = ic.compile_threads
    vtp_compile.configure_dynamo()

    spec = model_spec(args)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, prefix=args.text, suffix=args.text)
    others = [] if args.no_lengths else [make_inputs(spec, prefix=args.text, suffix=args.text + d, seed=d)
                                         for d in (7, 19)]
    L = inputs["input_ids"].shape[1]
    V = int((inputs["input_ids"] == spec.image_token_id).sum())
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    configs = [("inductor", None)] + [(m, method_options(m, args.budget, args.layer)) for m in methods]
    if args.inductor_config:
        configs = [(label, o if o is None else {**o, "inductor_config": json.loads(args.inductor_config)})
                   for label, o in configs]
    modules = {label: model for label, _ in configs}
    if args.by_hand:
        sys.path.insert(0, str(Path(__file__).resolve().parent))     # a sibling script
        from fastv_by_hand import FastVByHand
        configs.append(("fastv-by-hand", None))
        modules["fastv-by-hand"] = FastVByHand(model, args.layer, args.budget).eval()

    t_start = time.perf_counter()
    with torch.inference_mode():
        model(**inputs)                 # eager warm-up (transformers' output-capture hooks)
    # untimed: pay the one-time imports and Inductor's CPU-ISA probe on a tiny model
    if not args.no_warmup:
        wspec = TinySpec(layers=3)
        wmodel, winputs = tiny_llava(wspec), make_inputs(wspec)
        with torch.inference_mode():
            wmodel(**winputs)
        for label, opts in configs:
            if label == "fastv-by-hand":
                continue
            if opts is not None and opts.get("layer", 1) >= wspec.layers:
                opts = {**opts, "layer": 1}
            measure(wmodel, winputs, "warm-up", opts, [])

    print(f"model: hidden {args.hidden} x {args.layers} layers, prompt {L} tokens ({V} visual), batch 1, "
          f"fp32; torch {torch.__version__}, {args.threads} thread(s), compile_threads "
          f"{args.compile_threads}, {platform.machine()}", flush=True)
    rows = []
    for r in range(args.rounds):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        for label, opts in order:
            first = _dynamic_length(inputs) if args.dynamic else inputs
            row = measure(modules[label], first, label, opts, others, args.kernels)
            row["round"] = r
            rows.append(row)
            print(f"round {r}: {label:10s} first call {row['first_call_s']:6.1f} s, compile "
                  f"{row['compile_s']:6.1f} s, {row['kernels']} C++ kernels ({row['kernels_symbolic']} "
                  f"with a size argument), CPU: this process "
                  f"{row['self_cpu_s']:.1f} s, C++ compiler {row['cc_cpu_s']:.1f} s; graphs "
                  f"{row['graphs_first']} / new lengths {row['graphs_new_lengths']}", flush=True)
            if args.breakdown:
                print("         " + ", ".join(f"{k} {v:.1f}" for k, v in row["phases_s"].items()), flush=True)

    print("\n| config | compile s (median) | first call s (median) | ratio to inductor (paired median) "
          "| CPU s, process + C++ compiler (median) | CPU ratio | C++ kernels | graphs first call / new lengths |")
    print("|---|---|---|---|---|---|---|---|")
    base = {r["round"]: r for r in rows if r["config"] == "inductor"}
    summary = {}
    for label, _ in configs:
        mine = [r for r in rows if r["config"] == label]
        ratio = statistics.median(r["compile_s"] / base[r["round"]]["compile_s"] for r in mine)
        cpu = lambda r: r["self_cpu_s"] + r["cc_cpu_s"]      # noqa: E731
        cpu_ratio = statistics.median(cpu(r) / cpu(base[r["round"]]) for r in mine)
        summary[label] = {"compile_s": statistics.median(r["compile_s"] for r in mine),
                          "first_call_s": statistics.median(r["first_call_s"] for r in mine),
                          "ratio": ratio,
                          "cpu_s": statistics.median(cpu(r) for r in mine), "cpu_ratio": cpu_ratio,
                          "kernels": max(r["kernels"] for r in mine),
                          "kernels_symbolic": max(r["kernels_symbolic"] for r in mine),
                          "graphs_first": max(r["graphs_first"] for r in mine),
                          "graphs_new_lengths": max(r["graphs_new_lengths"] for r in mine)}
        s = summary[label]
        lengths = "-" if args.no_lengths else s["graphs_new_lengths"]
        print(f"| {label} | {s['compile_s']:.1f} | {s['first_call_s']:.1f} | {ratio:.2f}x | {s['cpu_s']:.1f} | "
              f"{cpu_ratio:.2f}x | {s['kernels']} ({s['kernels_symbolic']} with a size argument) | "
              f"{s['graphs_first']} / {lengths} |")
    if not args.no_lengths:
        base_new = summary["inductor"]["graphs_new_lengths"]
        extra = {k: v["graphs_new_lengths"] - base_new for k, v in summary.items() if k != "inductor"}
        print(f"graphs compiled for {len(others)} other prompt lengths beyond Inductor's own "
              f"({base_new}): " + ", ".join(f"{k} {v:+d}" for k, v in extra.items()))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "prompt": L, "visual": V, "torch": torch.__version__,
                       "rows": rows,
                       "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
