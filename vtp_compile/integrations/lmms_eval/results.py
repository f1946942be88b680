"""Accuracy retention per method and budget from lmms-eval's output files (``vtp lmms-table``).

Reads every ``*_results.json`` under the given paths (lmms-eval writes
``OUTPUT_PATH/<model>/<date>_results.json``), keeps the ``--model vtp`` runs, reads each run's
method and budget back from its ``config.model_args`` (the same parser as the model), and builds
the result dict of ``vtp eval``'s sweep (:mod:`vtp_compile.bench.sweep`), so the same table and
plot come out: the ``method=none`` run of the same checkpoint is the baseline, every other run
gets its score as a percentage of the baseline's, per task and for the unweighted task mean.

What vtp left unpruned in a run (``throughput.avg_vtp_unpruned_graphs``) is listed under the
table; a pruned run in which vtp pruned no graph is flagged.
"""
from __future__ import annotations

import json
from pathlib import Path

from .model_args import NONE_METHOD, parse_model_args

SKIP_KEYS = ("alias", "samples", "n-samples")


def find_result_files(paths) -> list[Path]:
    """``*_results.json`` files: the paths themselves, or found under the folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.rglob("*_results.json"))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    if not out:
        raise ValueError(f"no lmms-eval *_results.json files under {[str(p) for p in paths]}")
    return out


def _split_args(text: str) -> dict:
    """``key=value,...`` as lmms-eval splits ``--model_args`` (commas inside brackets, braces
    or quotes stay in the value); values are coerced by :func:`parse_model_args`."""
    from ...bench.compile import _split_top
    out = {}
    for item in _split_top(text or ""):
        if item.strip():
            key, _, value = item.partition("=")
            out[key.strip()] = value.strip()
    return out


def pick_metric(task_result: dict, metric: str | None = None) -> tuple[str, float]:
    """``(name, value)`` of a task's score: ``metric`` if given (with or without its
    ``,filter`` suffix), else the first non-stderr number lmms-eval reported."""
    for key, value in task_result.items():
        name = key.split(",")[0]
        if name in SKIP_KEYS or name.endswith("_stderr") or not isinstance(value, (int, float)):
            continue
        if metric is None or metric in (key, name):
            return name, float(value)
    raise ValueError(f"metric {metric!r} not in this task's results; reported: "
                     f"{[k for k in task_result if k.split(',')[0] not in SKIP_KEYS]}")


def load_run(path: Path, metric: str | None = None) -> dict | None:
    """One run of a results file (None for a model other than ``vtp``)."""
    data = json.loads(Path(path).read_text())
    cfg = data.get("config", {})
    if cfg.get("model") not in ("vtp", "vtp_compile"):
        return None
    margs = parse_model_args(_split_args(cfg.get("model_args", "")))
    groups = set(data.get("groups", {})) | {g for g in data.get("group_subtasks", {})
                                            if data.get("group_subtasks", {}).get(g)}
    scores, metrics = {}, {}
    for task, res in data.get("results", {}).items():
        if task in groups:
            continue
        reports = metric is not None and any(metric in (k, k.split(",")[0]) for k in res)
        metrics[task], scores[task] = pick_metric(res, metric if reports else None)
    if metric is not None and metric not in metrics.values():
        raise ValueError(f"{path}: no task reports metric {metric!r}")
    thr = data.get("throughput", {})
    return {"file": str(path), "pretrained": margs.settings["pretrained"],
            "method": margs.method_label, "budget": margs.budget,
            "backend": (margs.options or {}).get("inner_backend", margs.unpruned_backend),
            "limit": cfg.get("limit"), "accuracy": scores, "metric": metrics,
            "unpruned_graphs": thr.get("avg_vtp_unpruned_graphs"),
            "pruned_graphs": thr.get("avg_vtp_pruned_graphs"), "date": data.get("date")}


def build_tables(paths, metric: str | None = None) -> list[dict]:
    """One sweep-shaped result dict per checkpoint (see the module docstring)."""
    from ...bench.sweep import _mean, retention

    runs = [r for r in (load_run(p, metric) for p in find_result_files(paths)) if r is not None]
    if not runs:
        raise ValueError("no '--model vtp' runs in the given lmms-eval results")
    tables = []
    for pretrained in dict.fromkeys(r["pretrained"] for r in runs):
        mine = sorted((r for r in runs if r["pretrained"] == pretrained), key=lambda r: r["date"] or "")
        base = [r for r in mine if r["method"] == NONE_METHOD]
        if not base:
            raise ValueError(f"no baseline run (method=none) for {pretrained}; run "
                             f"lmms-eval --model vtp --model_args pretrained={pretrained},method=none")
        baseline = base[-1]       # the newest
        tasks = list(baseline["accuracy"])
        baseline = {**baseline, "mean_accuracy": _mean(baseline["accuracy"].values())}
        out_runs = []
        for r in mine:
            if r["method"] == NONE_METHOD:
                continue
            missing = [t for t in tasks if t not in r["accuracy"]]
            if missing:
                raise ValueError(f"{r['file']}: no results for {missing} (the baseline has them)")
            if r["limit"] != baseline["limit"]:
                raise ValueError(f"{r['file']}: --limit {r['limit']} differs from the baseline's "
                                 f"({baseline['limit']}): not the same examples")
            acc = {t: r["accuracy"][t] for t in tasks}
            mean = _mean(acc.values())
            out_runs.append({**r, "accuracy": acc, "mean_accuracy": mean,
                             "retention": retention(acc, baseline["accuracy"]),
                             "mean_retention": (100.0 * mean / baseline["mean_accuracy"]
                                                if baseline["mean_accuracy"] else None)})
        out_runs.sort(key=lambda r: (r["method"], float(r["budget"] or 0)))
        tables.append({"pretrained": pretrained, "tasks": tasks,
                       "metric": baseline["metric"], "compile_unpruned": baseline["backend"],
                       "baseline": baseline, "runs": out_runs})
    return tables


def notes(table: dict) -> list[str]:
    """Lines under a table: metrics, and runs in which vtp left graphs unpruned or pruned none."""
    names = sorted(set(table["metric"].values()))
    lines = [f"model: {table['pretrained']}; score: {', '.join(names)}; retention = score / "
             "unpruned score (method=none), in %"]
    for r in table["runs"]:
        label = f"{r['method']}@{r['budget']}"
        if r.get("unpruned_graphs"):
            lines.append(f"{label}: vtp left {r['unpruned_graphs']:g} graph(s) unpruned "
                         f"(reasons in the run's log; report=PATH writes them)")
        if r.get("pruned_graphs") == 0:
            lines.append(f"{label}: vtp pruned no graph in this run")
    return lines


def render(tables: list[dict]) -> str:
    """The text of every table (``vtp eval``'s format) with its notes."""
    from ...bench.sweep import format_table

    def shown(t):   # a chain has no budget of its own: its stages carry theirs
        return {**t, "runs": [{**r, "budget": "-" if r["budget"] is None else r["budget"]}
                              for r in t["runs"]]}
    return "\n\n".join(format_table(shown(t)) + "\n" + "\n".join(notes(t)) for t in tables)


def plot(table: dict, path) -> Path:
    """``vtp eval``'s accuracy-vs-budget plot for one table (budgets of chains: not plotted)."""
    from ...bench.plot import plot_accuracy
    plottable = {**table, "runs": [r for r in table["runs"] if r["budget"] is not None]}
    scores = [v for r in [table["baseline"], *plottable["runs"]] for v in r["accuracy"].values()]
    unit = all(0.0 <= v <= 1.0 for v in scores)
    return plot_accuracy(plottable, path, ylabel=("exact-match accuracy" if unit else "score"),
                         ylim=((-0.02, 1.02) if unit else None))
