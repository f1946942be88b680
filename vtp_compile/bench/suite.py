"""One benchmark suite: prefill, decode, KV memory and compile cost, pruned against unpruned,
vtp against the research-repo FastV hooks, side by side, each next to its limit.

    python benchmarks/suite.py --tiny          # CI scale: tiny models, eager, < 60 s
    python benchmarks/suite.py                 # this machine's scale (cpu, or gpu with CUDA)
    python benchmarks/suite.py --scale gpu     # LLaVA-1.5-7B and Qwen2.5-VL-7B shapes, bf16

Per model, four configurations run the same prompts:

* ``unpruned``: ``model.compile(backend=<compiler>)``, the baseline;
* ``vtp``: ``model.compile(backend="vtp", options={"method": "fastv", ...})`` lowered with the
  same compiler;
* ``peer-eager``: FastV as research repositories do it (:mod:`.peer_fastv`: hooks, eager
  attention at layer K-1), not compiled;
* ``peer-compiled``: the same hooks under ``model.compile(backend=<compiler>)``, where it
  compiles (a failure is reported, not raised).

Measured: prefill (time to the first new token, batch 1), decode tokens/s at each batch
(``B x N`` tokens over the time from the first to the last of ``1 + N`` new tokens, read by a
never-stopping stopping criterion in the same generate), the KV cache bytes after prefill,
compile time (first call minus a steady one) and the graphs Dynamo compiled (first call; then
for two other prompt lengths and the other batch sizes). Timed rounds are interleaved (every
configuration once per round, in a rotated order) and medians reported. Limits: on CPU the
FLOP ratio, on CUDA the per-layer roofline on an H200 (:mod:`.roofline`), for the decoder and
the LM head.

``--cache static``: every generate uses transformers' static cache
(``cache_implementation="static"``, HF's documented fast generation). Only ``unpruned`` and
``vtp`` run (the research-repo hooks write the kept tokens' keys at the wrong slots of a
static buffer); the buffers have one size pruned or not, so the KV column is equal and the
decode limit is 1.00: the saving is prefill compute (``docs/static_cache.md``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from typing import Callable

import torch

from . import roofline
from .peer_fastv import HookFastV

CONFIGS = ("unpruned", "vtp", "peer-eager", "peer-compiled")
STATIC_CONFIGS = ("unpruned", "vtp")       # --cache static: see the module docstring


# ---- models ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    """A model, its prompts, and the FastV setting every configuration uses."""
    name: str
    build: Callable[[str, torch.dtype], torch.nn.Module]
    inputs: Callable[[torch.nn.Module, int, int], dict]   # (model, batch, extra text) -> inputs
    budget: int
    layer: int = 2
    batches: tuple = (1, 8, 32)
    prefill: bool = True
    lengths: bool = True        # also count the graphs compiled for two other prompt lengths
    visual_token: str = "image_token_id"   # the config entry of the pruned placeholder token


def _llava(spec_kw: dict):
    def build(device, dtype):
        from ..testing.tiny import TinySpec, tiny_llava
        with torch.device(device):
            model = tiny_llava(TinySpec(**spec_kw))
        return model.to(device=device, dtype=dtype)

    def inputs(model, batch, extra):
        from ..testing.tiny import TinySpec, make_inputs
        return make_inputs(TinySpec(**spec_kw), batch=batch, prefix=5, suffix=10 + extra)
    return build, inputs


def _llava_7b_build(device, dtype):
    """LLaVA-1.5-7B's shapes (Vicuna-7B: 32 layers, hidden 4096; CLIP ViT-L/14 at 336 px, 576
    visual tokens), random weights, built directly on ``device`` in ``dtype``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    vc = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                          num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    tc = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                     max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=32000,
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    cfg._attn_implementation = "sdpa"
    return _build_on(LlavaForConditionalGeneration, cfg, device, dtype, suppress=[0, 1, 2, 32000])


def _llava_7b_inputs(model, batch, extra):
    g = torch.Generator().manual_seed(extra)
    text = lambda n: torch.randint(3, 32000, (batch, n), generator=g)      # noqa: E731
    ids = torch.cat([text(5), torch.full((batch, 576), 32000), text(40 + extra)], 1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(batch, 3, 336, 336, generator=g)}


def _build_on(cls, cfg, device, dtype, suppress):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = 0, 1, 2
    gc.suppress_tokens = suppress
    return model


def _qwen(layers, text=None, vision=None, size=(64, 64), clip=None):
    def build(device, dtype):
        from ..testing.families import build_model
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                kw = {}
                if text:
                    kw["text_config"] = text
                if vision:
                    kw["vision_config"] = vision
                return build_model("qwen2_5_vl", layers=layers, **kw)
        finally:
            torch.set_default_dtype(old)

    def inputs(model, batch, extra):
        from ..testing.families import ImageSpec, RowSpec, make_inputs
        row = (RowSpec(5, 10 + extra, (), (clip,)) if clip is not None
               else RowSpec(5, 10 + extra, (ImageSpec(*size),)))
        return make_inputs("qwen2_5_vl", model, [row] * batch, seed=extra)
    return build, inputs


QWEN25_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, head_dim=128,
                      num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768,
                      rms_norm_eps=1e-6,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                       "mrope_section": [16, 24, 24]})
QWEN25_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                        out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                        temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])


def cases(scale: str) -> list[Case]:
    from ..testing.families import VideoSpec
    if scale == "tiny":
        lb, li = _llava(dict(layers=2))
        qb, qi = _qwen(2)
        _, vi = _qwen(2, clip=VideoSpec(4, 64, 64))
        return [Case("llava-tiny", lb, li, budget=4, layer=1, batches=(1,)),
                Case("qwen2.5-vl-tiny", qb, qi, budget=4, layer=1, batches=(1,)),
                Case("qwen2.5-vl-tiny-video", qb, vi, budget=8, layer=1, batches=(1,),
                     visual_token="video_token_id")]
    if scale == "cpu":
        big = dict(hidden=1024, intermediate=2816, layers=8, heads=16, kv_heads=16, image_size=384,
                   patch=16, vocab=1024, vision_hidden=64, max_positions=2048)
        small = dict(hidden=512, intermediate=1408, layers=4, heads=8, kv_heads=8, image_size=192,
                     patch=16, vocab=1024, vision_hidden=64, max_positions=2048)
        lb, li = _llava(big)
        sb, si = _llava(small)
        return [Case("llava-cpu-1024x8 (576 visual)", lb, li, budget=64, layer=2, batches=(1,)),
                Case("llava-cpu-512x4 (144 visual)", sb, si, budget=16, layer=2, batches=(8, 32),
                     prefill=False, lengths=False)]
    if scale == "gpu":
        qb, qi = _qwen(28, QWEN25_7B_TEXT, QWEN25_7B_VISION, size=(1008, 1008))   # 1296 visual
        # a 32-frame clip at 448 px: 16 temporal patches of 16x16 merged patches, 4096 visual
        _, vi = _qwen(28, QWEN25_7B_TEXT, QWEN25_7B_VISION, clip=VideoSpec(32, 448, 448))
        return [Case("llava-1.5-7b", _llava_7b_build, _llava_7b_inputs, budget=64, layer=2),
                Case("qwen2.5-vl-7b", qb, qi, budget=144, layer=2),
                Case("qwen2.5-vl-7b-video (32 frames)", qb, vi, budget=512, layer=2, batches=(1, 8),
                     visual_token="video_token_id")]
    raise ValueError(f"unknown scale {scale!r}")


# ---- running -----------------------------------------------------------------------------------
class Runner:
    """One model with every configuration compiled once; ``use(cfg)`` switches between them."""

    def __init__(self, case: Case, model, compiler: str, image_token: int, span, cache: str = "dynamic"):
        self.case, self.model, self.compiler = case, model, compiler
        self.cache = cache
        self.impl: dict = {}
        self.peer = HookFastV(model, case.layer, case.budget, *span)
        self.failed: dict = {}
        self.image_token = image_token

    def use(self, cfg: str) -> None:
        self.peer.detach()
        if cfg.startswith("peer"):
            self.peer.attach()
        self.model._compiled_call_impl = self.impl.get(cfg)

    def compile(self, cfg: str) -> None:
        m = self.model
        self.use(cfg)
        if cfg == "peer-eager":
            return
        if cfg == "vtp":
            m.compile(backend="vtp", options={"method": "fastv", "budget": self.case.budget,
                                              "layer": self.case.layer,
                                              "inner_backend": self.compiler})
        else:
            m.compile(backend=self.compiler)
        self.impl[cfg] = m._compiled_call_impl

    def generate(self, inputs, n: int, cache: bool = False, clock: "StepClock | None" = None):
        from transformers import StoppingCriteriaList
        extra = {"stopping_criteria": StoppingCriteriaList([clock])} if clock is not None else {}
        if self.cache == "static":
            extra["cache_implementation"] = "static"
        out = self.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  return_dict_in_generate=cache, **extra)
        _sync()
        return out


class StepClock:
    """A stopping criterion that never stops and records when each new token is out: ``t[0]``
    after the prefill (and the first token), ``t[i]`` after decode step ``i``. One generate
    gives both the prefill time and the decode rate, with no difference of two noisy runs."""

    def __init__(self):
        self.t: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        _sync()
        self.t.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


_T0 = time.perf_counter()


def _progress(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _graphs() -> int:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def _kv_bytes(out) -> int:
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    total = 0
    for lyr in getattr(cache, "layers", []):
        for t in (getattr(lyr, "keys", None), getattr(lyr, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _timed(fn) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def run_case(case: Case, args, device, dtype) -> dict:
    model = case.build(device, dtype)
    to = lambda d: {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in d.items()}  # noqa: E731
    if dtype != torch.float32:
        cast = lambda d: {k: (v.to(dtype) if torch.is_floating_point(v) else v) for k, v in d.items()}  # noqa: E731
    else:
        cast = lambda d: d  # noqa: E731
    inp = lambda b, extra=0: cast(to(case.inputs(model, b, extra)))  # noqa: E731
    img = getattr(model.config, case.visual_token)
    ids = inp(1)["input_ids"][0]
    pos = (ids == img).nonzero().flatten()
    span = (int(pos[0]), int(pos.numel()))
    r = Runner(case, model, args.compiler, img, span, args.cache)
    N = args.new_tokens
    configs = STATIC_CONFIGS if args.cache == "static" else CONFIGS
    res = {"model": case.name, "visual": span[1], "prompt": int(ids.numel()), "budget": case.budget,
           "layer": case.layer, "cache": args.cache, "configs": {}}
    with torch.inference_mode():
        r.use("unpruned")
        model(**inp(1))                            # eager warm-up (transformers' output hooks)
        for cfg in configs:
            row = res["configs"][cfg] = {}
            try:
                g0 = _graphs()
                _progress(f"{case.name}: {cfg}: compiling")
                t_first = _timed(lambda: r.compile(cfg) or r.generate(inp(1), N + 1))
                row["graphs_first"] = _graphs() - g0
                t_steady = _timed(lambda: r.generate(inp(1), N + 1))
                row["compile_s"] = max(0.0, t_first - t_steady) if cfg != "peer-eager" else 0.0
                g1 = _graphs()
                for extra in (args.lengths if case.lengths else ()):   # other prompt lengths
                    r.generate(inp(1, extra), 2)
                row["graphs_new_lengths"] = _graphs() - g1
                row["kv_bytes"] = _kv_bytes(r.generate(inp(1), 1, cache=True))
            except Exception as e:          # noqa: BLE001  (a peer that does not compile)
                r.failed[cfg] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                row["error"] = r.failed[cfg]
        live = [c for c in configs if c not in r.failed]
        res["decode"] = {}
        for B in case.batches:
            _progress(f"{case.name}: batch {B}")
            x = inp(B)
            g0 = _graphs()
            # batch 1 compiled and ran in the compile phase above: no warm-up round needed
            pre, dec = _rounds(r, live, x, N, args.runs, 0 if B == 1 else args.warmup)
            if B == 1 and case.prefill:
                for c in live:
                    res["configs"][c]["prefill_ms"] = 1e3 * statistics.median(pre[c])
            res["decode"][B] = {c: B * N / statistics.median(dec[c]) for c in live}
            res["decode"][f"graphs_b{B}"] = _graphs() - g0
    r.use("peer-eager")
    r.peer.detach()
    res["limits"] = _limits(model, case, span, res["prompt"], device, args.cache == "static")
    return res


def _rounds(r: Runner, cfgs, x, n: int, runs: int, warmup: int) -> tuple[dict, dict]:
    """``(prefill seconds, decode seconds for n steps)`` per config: ``warmup + runs`` rounds,
    every config once per round in a rotated order; the warm-up rounds (which compile the
    graphs of a new batch size) are dropped."""
    pre = {c: [] for c in cfgs}
    dec = {c: [] for c in cfgs}
    for i in range(warmup + runs):
        k = i % len(cfgs)
        for c in cfgs[k:] + cfgs[:k]:
            r.use(c)
            clock = StepClock()
            _sync()
            t0 = time.perf_counter()
            r.generate(x, n + 1, clock=clock)
            if i >= warmup:
                pre[c].append(clock.t[0] - t0)
                dec[c].append(clock.t[-1] - clock.t[0])
    return pre, dec


def _limits(model, case: Case, span, L: int, device, static: bool = False) -> dict:
    s = roofline.DecoderShape.from_config(model.config.get_text_config())
    V = span[1]
    kept = min(case.budget, V)
    full_pre, full_cache = [L] * s.layers, [L] * s.layers
    out = {"prefill": {}, "decode": {}}
    dev = roofline.H200
    for name, evict in (("vtp", True), ("peer", False)):
        pre, cache = roofline.fastv_lengths(L, V, kept, case.layer, s.layers, evict)
        base = roofline.prefill_costs(s, full_pre, 1)
        pruned = roofline.prefill_costs(s, pre, 1)
        out["prefill"][name] = {"flop_ratio": roofline.total(base) / roofline.total(pruned),
                                "roofline_ratio": roofline.total(base, dev) / roofline.total(pruned, dev),
                                "roofline_ms_pruned": 1e3 * roofline.total(pruned, dev),
                                "roofline_ms_unpruned": 1e3 * roofline.total(base, dev)}
        for B in case.batches:
            base = roofline.decode_costs(s, full_cache, B)
            # a static buffer keeps its size: decode reads the same slots pruned or not
            pruned = roofline.decode_costs(s, full_cache if static else cache, B)
            out["decode"].setdefault(B, {})[name] = {
                "flop_ratio": roofline.total(base) / roofline.total(pruned),
                "roofline_ratio": roofline.total(base, dev) / roofline.total(pruned, dev),
                "roofline_tok_s_pruned": B / roofline.total(pruned, dev),
                "roofline_tok_s_unpruned": B / roofline.total(base, dev)}
    return out


# ---- report ------------------------------------------------------------------------------------
def report(results: list[dict], cuda: bool) -> str:
    lim = "roofline_ratio" if cuda else "flop_ratio"
    lim_name = "H200 roofline ratio" if cuda else "FLOP ratio"
    lines = []
    for res in results:
        cf = res["configs"]
        configs = [c for c in CONFIGS if c in cf]
        static = ", static cache" if res.get("cache") == "static" else ""
        lines.append(f"\n### {res['model']}: {res['prompt']} prompt tokens ({res['visual']} visual), "
                     f"FastV layer {res['layer']}, budget {res['budget']}{static}\n")
        lines.append(f"| config | prefill ms | speed-up | limit ({lim_name}) | KV MiB after prefill | "
                     f"compile s | graphs (first call / new lengths) |")
        lines.append("|---|---|---|---|---|---|---|")
        base = cf["unpruned"].get("prefill_ms")
        for c in configs:
            row = cf[c]
            if "error" in row:
                lines.append(f"| {c} | failed: {row['error']} | | | | | |")
                continue
            p = row.get("prefill_ms")
            sp = f"{base / p:.2f}" if p and base else "-"
            which = "vtp" if c == "vtp" else "peer" if c.startswith("peer") else None
            lm = f"{res['limits']['prefill'][which][lim]:.2f}" if which else "1.00"
            lines.append(f"| {c} | {p:.1f} | {sp} | {lm} | {row['kv_bytes'] / 2**20:.2f} | "
                         f"{row['compile_s']:.1f} | {row['graphs_first']} / {row['graphs_new_lengths']} |"
                         if p else
                         f"| {c} | - | - | {lm} | {row['kv_bytes'] / 2**20:.2f} | {row['compile_s']:.1f} | "
                         f"{row['graphs_first']} / {row['graphs_new_lengths']} |")
        lines.append("")
        lines.append(f"| batch | " + " | ".join(f"{c} tok/s" for c in configs) +
                     f" | vtp speed-up (limit) | peer-eager speed-up (limit) | graphs compiled |")
        lines.append("|---|" + "---|" * (len(configs) + 3))
        for B, d in res["decode"].items():
            if isinstance(B, str):
                continue
            u = d.get("unpruned")
            cells = [f"{d[c]:.1f}" if c in d else "failed" for c in configs]
            lb = res["limits"]["decode"][B]
            sv = f"{d['vtp'] / u:.2f} ({lb['vtp'][lim]:.2f})" if u and "vtp" in d else "-"
            sp = (f"{d['peer-eager'] / u:.2f} ({lb['peer'][lim]:.2f})" if u and "peer-eager" in d else "-")
            lines.append(f"| {B} | " + " | ".join(cells) + f" | {sv} | {sp} | "
                         f"{res['decode'].get(f'graphs_b{B}', '-')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CI scale (same as --scale tiny)")
    ap.add_argument("--scale", choices=("tiny", "cpu", "gpu"), default=None,
                    help="default: gpu with CUDA, else cpu")
    ap.add_argument("--models", default=None, help="comma-separated subset of the scale's models")
    ap.add_argument("--compiler", default=None,
                    help="the compiler every configuration uses (default: inductor; eager at tiny scale)")
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", choices=("dynamic", "static"), default="dynamic",
                    help="transformers' cache for every generate (static: unpruned and vtp only)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    scale = "tiny" if args.tiny else args.scale or ("gpu" if cuda else "cpu")
    args.compiler = args.compiler or ("eager" if scale == "tiny" else "inductor")
    args.new_tokens = args.new_tokens or {"tiny": 2, "cpu": 8, "gpu": 32}[scale]
    args.runs = args.runs or {"tiny": 1, "cpu": 3, "gpu": 5}[scale]
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if (cuda and scale == "gpu") else torch.float32
    args.lengths = () if scale == "tiny" else (3, 7)
    if not cuda:
        torch.set_num_threads(args.threads)
    from .. import configure_dynamo
    configure_dynamo(recompile_limit=256)
    t0 = time.perf_counter()
    todo = cases(scale)
    if args.models:
        short = {c.name.split(" (")[0]: c for c in todo}     # "llava-cpu-1024x8 (576 visual)"
        want = args.models.split(",")
        unknown = [w for w in want if w not in short and w not in {c.name for c in todo}]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown} at scale {scale}; choose from "
                             + ", ".join(short))
        todo = [c for c in todo if c.name in want or c.name.split(" (")[0] in want]
    results = [run_case(c, args, device, dtype) for c in todo]
    env = {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
           "python": platform.python_version(), "device": torch.cuda.get_device_name() if cuda
           else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "scale": scale, "compiler": args.compiler, "cache": args.cache, "new_tokens": args.new_tokens,
           "runs": args.runs, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"\nvtp benchmark suite, scale {scale} on {env['device']} ({env['threads']} threads), "
          f"compiler {args.compiler}, {args.cache} cache, torch {env['torch']}, "
          f"transformers {env['transformers']}; "
          f"decode: {args.new_tokens} new tokens; medians of {args.runs} interleaved rounds; "
          f"{env['seconds']} s in all")
    print(report(results, cuda))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
