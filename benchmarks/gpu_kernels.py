"""vtp's Triton kernels against their PyTorch references, op by op: same result, and time on CUDA.

Every op declared ``triton_kernel`` (vtp_compile/kernels/lowering.py) has a PyTorch reference
(its CPU kernel, device-generic code) and a CUDA kernel that launches Triton kernels. On a GPU
this runs both on the same CUDA tensors, checks that they agree, and times them (CUDA events,
median of ``--runs`` after ``--warmup``). Without a GPU, ``TRITON_INTERPRET=1`` runs the Triton
kernels in Triton's CPU interpreter: a correctness check only, at ``--tiny`` sizes.

    python benchmarks/gpu_kernels.py                          # on a GPU: B 8, L 4096, D 3584
    TRITON_INTERPRET=1 python benchmarks/gpu_kernels.py --tiny  # anywhere: the check only

Exit status 1 when any kernel disagrees with its reference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def _inputs(name: str, B: int, L: int, D: int, device) -> tuple:
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    vis = (torch.rand(B, L, generator=g) < 0.9).to(device)
    live = vis | (torch.rand(B, L, generator=g) < 0.5).to(device)
    n_keep = torch.randint(1, max(2, L // 4), (B,), generator=g).to(device)
    if name == "select_keep":
        return randn(B, L), vis, live, n_keep
    if name == "divprune_scores":
        return randn(B, L, D), vis, n_keep
    if name == "cluster_select_scores":
        return randn(B, L, D), randn(B, L), vis, n_keep, 3
    if name == "dpp_greedy":
        f = torch.nn.functional.normalize(randn(B, L, 64), dim=-1)
        return f @ f.transpose(1, 2) + 1e-3 * torch.eye(L, device=device), vis, n_keep
    if name == "reserve_cover":
        return randn(B, L, D), vis, live & (torch.rand(B, L, generator=g) < 0.3).to(device), n_keep
    if name == "pdrop_keep":
        return torch.randint(L // 2, L + 1, (B,), generator=g).to(device), [2, 8, 16, 28], 2, L // 8, 0, 1
    if name == "fastvid_density":
        from vtp_compile.kernels.frames import frame_ids
        frame = max(1, L // 16)                     # 16 frames
        return randn(B, L, D), frame_ids(vis, None, frame), vis & (torch.rand(B, L, generator=g) < 0.7).to(device)
    if name == "fastvid_targets":
        seg = torch.sort(torch.randint(0, 4, (B, L), generator=g), dim=1).values.to(device)
        target = vis & (torch.rand(B, L, generator=g) < 0.1).to(device)
        return randn(B, L, D), seg, vis & ~target, target
    raise KeyError(f"no inputs written for vtp::{name}: add them to benchmarks/gpu_kernels.py")


def _kernels(name: str):
    """``(reference, cuda kernel)`` of ``vtp::name``, from the op family's file."""
    import vtp_compile.kernels as K
    (mod,) = [m for m in vars(K).values() if hasattr(m, f"_{name}_cuda")]
    return getattr(mod, name), getattr(mod, f"_{name}_cuda")


def _agree(a, b) -> tuple[bool, float]:
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    worst, ok = 0.0, True
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return False, float("inf")
        if x.dtype.is_floating_point:
            fin = torch.isfinite(x) & torch.isfinite(y)
            ok &= bool(torch.equal(torch.isfinite(x), torch.isfinite(y)))
            if fin.any():
                d = (x[fin].double() - y[fin].double()).abs()
                worst = max(worst, float(d.max()))
                ok &= bool(torch.allclose(x[fin].double(), y[fin].double(), rtol=1e-4, atol=1e-5))
        else:
            ok &= bool(torch.equal(x, y))
            worst = max(worst, float((x != y).sum()))
    return ok, worst


def _time(fn, args, runs: int, warmup: int, cuda: bool) -> float:
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(runs):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default=None, help="comma-separated op names (default: every Triton op)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=3584)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="B 2, L 48, D 16, one run (the interpreter's size)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    from vtp_compile.kernels import lowering
    cuda = torch.cuda.is_available()
    if not cuda and not __import__("os").environ.get("TRITON_INTERPRET") == "1":
        print("no GPU: set TRITON_INTERPRET=1 to check the kernels in Triton's interpreter (--tiny)")
        return 2
    B, L, D = (2, 48, 16) if args.tiny else (args.batch, args.tokens, args.hidden)
    runs, warmup = (1, 0) if args.tiny or not cuda else (args.runs, args.warmup)
    device = torch.device("cuda" if cuda else "cpu")
    names = args.ops.split(",") if args.ops else sorted(lowering.TRITON)
    rows, bad = [], 0
    print(f"{'CUDA ' + torch.cuda.get_device_name() if cuda else 'Triton interpreter (CPU)'}; "
          f"B {B}, L {L}, D {D}; torch {torch.__version__}", flush=True)
    print("| op | reference ms | Triton ms | speed-up | agrees (max abs diff) |")
    print("|---|---|---|---|---|")
    for name in names:
        ref, kernel = _kernels(name)
        x = _inputs(name, B, L, D, device)
        ok, worst = _agree(kernel(*x), ref(*x))
        t_ref = _time(ref, x, runs, warmup, cuda)
        t_tri = _time(kernel, x, runs, warmup, cuda)
        bad += not ok
        rows.append({"op": name, "B": B, "L": L, "D": D, "reference_ms": t_ref, "triton_ms": t_tri,
                     "agrees": ok, "max_abs_diff": worst})
        print(f"| {name} | {t_ref:.3f} | {t_tri:.3f} | {t_ref / t_tri:.2f} | "
              f"{'yes' if ok else 'NO'} ({worst:.3g}) |", flush=True)
    if not cuda:
        print("(interpreter times are not kernel times)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
