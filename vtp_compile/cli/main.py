"""``vtp`` console script.

    vtp eval --methods none,random,fastv --budgets 12,25,49 --n 100 --out r.json --plot acc.png
    vtp eval --model ./my-llava --data my.jsonl --methods none,fastv --budgets 64
    vtp eval --tasks clips --methods none,fastv,divprune --budgets 196,98,49   # 4-frame clips
    vtp show --task grounding --index 0 --method fastv --budget 16 --out kept.png
    vtp eval --methods fastv,dstp:reserve=12,tau=0.1,dstp:reserve=12,reserve_by=score --budgets 12
    vtp lmms-table runs/ --plot acc.png       # lmms-eval --model vtp outputs -> retention table
    vtp lmms-tasks                            # the scene tasks' folder, for --include_path

Argument parsing only; the work happens in :mod:`vtp_compile.bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..extras import MissingExtraError, require


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="local HF checkpoint directory (default: the shipped scene model)")
    p.add_argument("--prompt", default=None,
                   help="prompt template with {image} and {question}; default: the "
                        "processor's chat template if it has one, else '{image} {question}'")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def build_parser() -> argparse.ArgumentParser:
    """The ``vtp`` argument parser (subcommands ``eval`` and ``show``)."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="vtp", description="vtp_compile tools", formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="accuracy of pruned vs unpruned generation, per task",
                        formatter_class=fmt)
    _add_model_args(ev)
    ev.add_argument("--tasks", default="all",
                    help="comma list of scene tasks and aliases: 'all' (the image tasks), "
                         "'clips' (the clip tasks: clip_order, clip_counting, clip_grounding); "
                         "with --data, the JSONL 'task' values")
    ev.add_argument("--frames", type=int, default=4,
                    help="frames per clip of the clip tasks (2-6), each given to the model as "
                         "one image after a 'frame N' label")
    ev.add_argument("--data", default=None, help="JSONL file: {image, question, answer[, task]}")
    ev.add_argument("--methods", default="none",
                    help="comma list, each method with optional options after a colon, e.g. "
                         "none,fastv,dstp:reserve=64,tau=0.1 (values are JSON where they parse), "
                         "or a JSON list/object, e.g. '[\"fastv\", {\"method\": \"dstp\", \"tau\": 0.1}]'")
    ev.add_argument("--budgets", default="12,25,49",
                    help="comma list: token counts (ints) or kept ratios in (0, 1)")
    ev.add_argument("--n", type=int, default=50, help="examples per task")
    ev.add_argument("--seed", type=int, default=None,
                    help="first example seed of the scene tasks (default: the first held-out "
                         "seed, vtp_compile.scenes.tasks.EVAL_SEED)")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--max-new-tokens", type=int, default=8)
    ev.add_argument("--eager", action="store_true",
                    help="run the unpruned baseline eagerly instead of compiling with Inductor")
    ev.add_argument("--out", default=None, help="write the JSON result here")
    ev.add_argument("--plot", default=None, help="write an accuracy-vs-budget PNG here")
    ev.add_argument("--save-predictions", action="store_true",
                    help="include every generated answer in the JSON")

    sh = sub.add_parser("show", help="draw the visual tokens each pruning site keeps",
                        formatter_class=fmt)
    _add_model_args(sh)
    sh.add_argument("--image", default=None, help="image file (else a scene task example)")
    sh.add_argument("--question", default=None, help="question (required with --image)")
    sh.add_argument("--task", default="grounding", help="scene task used without --image")
    sh.add_argument("--index", type=int, default=0, help="example index in the held-out range")
    sh.add_argument("--method", default="fastv",
                    help="a method with optional options, e.g. dstp:reserve=64,tau=0.1 or JSON")
    sh.add_argument("--budget", default="16", help="token count or kept ratio in (0, 1)")
    sh.add_argument("--out", default="kept_tokens.png", help="PNG to write (relative to the "
                    "current directory)")

    lt = sub.add_parser("lmms-table", help="accuracy retention per method and budget from "
                        "lmms-eval --model vtp output files", formatter_class=fmt)
    lt.add_argument("paths", nargs="+", help="lmms-eval --output_path folders or *_results.json")
    lt.add_argument("--metric", default=None,
                    help="the metric to tabulate where a task reports it (default, and for the "
                         "other tasks: each task's first reported metric)")
    lt.add_argument("--out", default=None, help="write the tables as JSON here")
    lt.add_argument("--plot", default=None, help="write an accuracy-vs-budget PNG here (one "
                    "checkpoint: this path; several: -N before the suffix)")
    sub.add_parser("lmms-tasks", help="print the folder of vtp's lmms-eval tasks (for "
                   "lmms-eval --include_path)", formatter_class=fmt)
    return parser


def cmd_lmms_table(args) -> int:
    """``vtp lmms-table``: the retention table (and plot) of lmms-eval runs of ``--model vtp``."""
    from ..integrations.lmms_eval import results

    if args.plot:
        require("matplotlib", "vtp lmms-table --plot")

    tables = results.build_tables(args.paths, args.metric)
    print(results.render(tables))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(tables, indent=2))
        print(f"wrote {args.out}")
    if args.plot:
        for i, table in enumerate(tables):
            path = Path(args.plot)
            if len(tables) > 1:
                path = path.with_name(f"{path.stem}-{i + 1}{path.suffix}")
            print(f"wrote {results.plot(table, path)}")
    return 0


def cmd_lmms_tasks(args) -> int:
    """``vtp lmms-tasks``: where the scene tasks live."""
    from ..integrations.lmms_eval import TASKS_DIR
    print(TASKS_DIR)
    return 0


def _load(args):
    require("PIL", f"vtp {args.command}")
    import torch

    from .. import configure_dynamo
    from ..scenes import load_scene_model
    if args.threads:
        torch.set_num_threads(args.threads)
    configure_dynamo()   # one prefill graph per call (no .item() graph-break warnings)
    return load_scene_model(args.model)


def cmd_eval(args) -> int:
    """``vtp eval``: run the sweep, print the table, write JSON / PNG if asked."""
    require("PIL", "vtp eval")          # the scene model's processor and data
    require("tqdm", "vtp eval")
    if args.plot:
        require("matplotlib", "vtp eval --plot")
    from ..bench.compile import NONE_METHOD, parse_budgets, parse_methods, prune_options
    from ..bench.data import load_jsonl, parse_tasks, scene_datasets
    from ..config import PruneConfig
    from ..bench.plot import plot_accuracy
    from ..bench.sweep import format_table, run_sweep
    from ..scenes.tasks import EVAL_SEED

    if args.seed is None:
        args.seed = EVAL_SEED

    methods = parse_methods(args.methods)
    budgets = parse_budgets(args.budgets)
    for m in methods:   # bad method options: an error before anything loads
        if m != NONE_METHOD:
            PruneConfig.from_options(prune_options(m, budgets[0]))
    if args.n < 1:
        raise ValueError("--n must be at least 1")
    if args.data:
        wanted = None if args.tasks == "all" else [t.strip() for t in args.tasks.split(",")]
        datasets = load_jsonl(args.data, n=args.n, tasks=wanted)
    else:
        datasets = scene_datasets(parse_tasks(args.tasks), args.n, args.seed, args.frames)
    model, processor = _load(args)
    result = run_sweep(model, processor, datasets, methods, budgets,
                       compile_unpruned=not args.eager, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, prompt_template=args.prompt,
                       keep_predictions=args.save_predictions)
    result.update(command="vtp " + " ".join(args.argv),
                  model=str(args.model or "shipped scene model"), data=args.data,
                  seed=None if args.data else args.seed, methods=methods, budgets=budgets)
    print(format_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    if args.plot:
        print(f"wrote {plot_accuracy(result, args.plot)}")
    failed = [f"{r['method']}@{r['budget']}" for r in result["runs"] if "error" in r]
    if failed:
        print(f"vtp eval: {len(failed)} configuration(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


def cmd_show(args) -> int:
    """``vtp show``: render the kept tokens of every pruning site for one image."""
    require("PIL", "vtp show")
    from PIL import Image

    from ..bench.compile import parse_budgets, parse_methods, prune_options
    from ..bench.render import save_png
    from ..bench.show import explain_image, get_explain
    from ..scenes.tasks import check_task, make_dataset

    get_explain()  # fail fast, before loading anything
    (budget,) = parse_budgets(args.budget)
    methods = parse_methods(args.method)
    if len(methods) != 1:
        raise ValueError(f"--method takes one method (with options), got {methods}")
    args.method = methods[0]
    from ..config import PruneConfig
    PruneConfig.from_options(prune_options(args.method, budget))   # bad options: before loading
    if args.image:
        if not args.question:
            raise ValueError("--image needs --question")
        image, question = Image.open(args.image).convert("RGB"), args.question
    else:
        ex = make_dataset(check_task(args.task), args.index + 1)[args.index]
        image, question = ex.image, args.question or ex.question
    model, processor = _load(args)
    sheet = explain_image(model, processor, image, question,
                          prune_options(args.method, budget), args.prompt)
    print(f"wrote {save_png(sheet, args.out).resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vtp`` console script; returns the exit status."""
    from ..bench.compile import BackendUnavailableError, ExplainUnavailableError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return {"eval": cmd_eval, "show": cmd_show, "lmms-table": cmd_lmms_table,
                "lmms-tasks": cmd_lmms_tasks}[args.command](args)
    except (ValueError, FileNotFoundError, BackendUnavailableError,
            ExplainUnavailableError, MissingExtraError) as e:
        print(f"vtp {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
