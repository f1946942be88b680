"""Peak memory and time of FastVID's kernels (scores, keep, merge) on one clip layout, CPU.

Each configuration runs in a fresh process; the figure is the growth of its peak RSS over the
kernels' call. Frames are ``--frame-tokens`` long, hidden ``--hidden``, 10 % of the visual tokens
kept. The same script at an older commit measures the code of that commit.

    python benchmarks/fastvid_memory.py                      # 2x16, 4x16, 4x32 frames of 256
    python benchmarks/fastvid_memory.py --configs 8x32 --hidden 1024
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[5]))
from vtp_compile.kernels import fastvid as fv
from vtp_compile.kernels.frames import frame_ids
from vtp_compile.kernels.select import keep_mask
B, F, T, D = (int(a) for a in sys.argv[1:5])
L = F * T + 8
h = torch.randn(B, L, D, generator=torch.Generator().manual_seed(0))
vis = torch.zeros(B, L, dtype=torch.bool)
vis[:, 4:4 + F * T] = True
frames = frame_ids(vis, None, T)
n_keep = torch.full((B,), F * T // 10)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
s = fv.fastvid_scores(h, frames, vis, n_keep, 0.9, 7, 0.4, 4, 1)
out = fv.fastvid_merge(h, frames, vis, keep_mask(s, vis, vis, n_keep), s, 0.9, 7, 0.6)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"B": B, "frames": F, "L": L, "peak_mib": (peak - base) / 1024, "seconds": dt,
                  "checksum": [float(s[s.isfinite()].sum()), float(out.double().sum())]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="2x16,4x16,4x32", help="batch x frames, comma-separated")
    ap.add_argument("--frame-tokens", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print("| batch x frames | L | peak RSS growth | time |")
    print("|---|---|---|---|")
    for cfg in args.configs.split(","):
        b, f = (int(v) for v in cfg.lower().split("x"))
        run = subprocess.run([sys.executable, "-c", CHILD, str(b), str(f), str(args.frame_tokens),
                              str(args.hidden), str(args.threads)], capture_output=True, text=True)
        if run.returncode:
            print(f"| {cfg} | | failed: {run.stderr.strip().splitlines()[-1]} | |")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"| {b} x {f} | {r['L']} | {r['peak_mib']:.0f} MiB | {r['seconds']:.2f} s |")


if __name__ == "__main__":
    main()
