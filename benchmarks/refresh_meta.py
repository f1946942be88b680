"""The time vtp's passes spend re-deriving shapes after a rewrite (``graph/fx_utils.refresh_meta``),
incremental (the default) against a full re-propagation, side by side in one process: one
family's ``generate`` traced once and rewritten for several methods
(``vtp_compile/testing/multiplex.py``), eager inner backend.

    python benchmarks/refresh_meta.py                    # Gemma 3, the family test's methods
    python benchmarks/refresh_meta.py --family qwen2_5_vl
    for m in incremental full incremental full; do python benchmarks/refresh_meta.py --mode $m; done

The in-process "both" favours whichever mode runs second (warmed caches and lazy setup); the
docs/tests.md's figures are the per-process loop.

Prints, per mode, the seconds inside refresh_meta, the calls, and the nodes re-run of all nodes.
"""
from __future__ import annotations

import argparse
import time

import torch


def run(family: str, incremental: bool) -> tuple[float, int, int, int]:
    from vtp_compile.graph import fx_utils
    from vtp_compile.passes import manager, pipeline
    from vtp_compile.testing import families as F
    from vtp_compile.testing.multiplex import Multiplex

    spent, calls, rerun, total = [0.0], [0], [0], [0]
    keep = fx_utils._KeepScalars

    def counting(gm, mode, inc=False):
        prop = keep(gm, mode, inc)
        step = prop.run_node

        def run_node(n):
            before = n.meta.get("val")
            out = step(n)
            rerun[0] += n.meta.get("val") is not before
            total[0] += 1
            return out
        prop.run_node = run_node
        return prop

    def timed(gm, example_inputs):
        t = time.perf_counter()
        fx_utils.refresh_meta(gm, example_inputs, incremental=incremental)
        spent[0] += time.perf_counter() - t
        calls[0] += 1

    old = manager.refresh_meta, pipeline.refresh_meta, fx_utils._KeepScalars
    manager.refresh_meta, pipeline.refresh_meta, fx_utils._KeepScalars = timed, timed, counting
    try:
        torch._dynamo.reset()
        model = F.build_model(family)
        rows = [F.RowSpec(3, 4, (F.ImageSpec(),)), F.RowSpec(5, 2, (F.ImageSpec(), F.ImageSpec())),
                F.RowSpec(4, 3, ())]
        inputs = F.make_inputs(family, model, rows, padding_side="left", seed=4)
        layer = {"layer": 1}
        configs = {m: {"method": m, "budget": 3, "inner_backend": "eager",
                       **(layer if m in ("fastv", "acgr", "dart") else {})}
                   for m in ("fastv", "divprune", "acgr", "random", "dart", "cdpruner")}
        mux = Multiplex(configs)
        with torch.no_grad():
            model(**inputs)
            model.compile(backend=mux)
            for m in configs:
                with mux.select(m):
                    model.generate(**inputs, max_new_tokens=2, do_sample=False)
    finally:
        manager.refresh_meta, pipeline.refresh_meta, fx_utils._KeepScalars = old
    return spent[0], calls[0], rerun[0], total[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="gemma3")
    ap.add_argument("--fake-cache", action="store_true",
                    help="keep Dynamo's fake-tensor cache on (the tests switch it off)")
    ap.add_argument("--mode", choices=("both", "incremental", "full"), default="both",
                    help="one mode per process avoids the second run's warm start")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch._dynamo.config.fake_tensor_cache_enabled = args.fake_cache
    from vtp_compile import configure_dynamo
    configure_dynamo()
    modes = {"both": (True, False), "incremental": (True,), "full": (False,)}[args.mode]
    for incremental in modes:
        s, calls, rerun, total = run(args.family, incremental)
        print(f"{args.family} refresh_meta {'incremental' if incremental else 'full':11s}: "
              f"{s:6.2f} s in {calls} calls, {rerun} of {total} nodes re-run", flush=True)


if __name__ == "__main__":
    main()
