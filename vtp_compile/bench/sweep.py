"""A benchmark sweep: the unpruned model, then every (method, budget) pair, on every task.

Produces one JSON-ready dict::

    {"baseline": {"accuracy": {task: acc}, ...},
     "runs": [{"method", "budget", "accuracy": {task: acc}, "retention": {task: %}, ...}], ...}

Retention is pruned accuracy divided by the unpruned accuracy on the same examples, in percent.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from .compile import NONE_METHOD, BackendUnavailableError, compiled_copy
from .evaluate import evaluate_model, n_batches


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _short_error(e: BaseException) -> str:
    """``Type: first line`` of an exception, followed by its root cause's when there is one."""
    def one(x):
        lines = [ln for ln in str(x).strip().splitlines() if ln.strip()]
        return f"{type(x).__name__}: {lines[0] if lines else ''}".rstrip()
    root = e
    while (getattr(root, "inner_exception", None) or root.__cause__) is not None:
        root = getattr(root, "inner_exception", None) or root.__cause__
    return one(e) if root is e else f"{one(e)} <- {one(root)}"


def retention(accuracy: dict[str, float], baseline: dict[str, float]) -> dict[str, float | None]:
    """Per-task accuracy as % of the baseline (None where the baseline is 0)."""
    return {t: (100.0 * a / baseline[t] if baseline.get(t) else None)
            for t, a in accuracy.items()}


def _run_one(base_model, processor, datasets, method, budget, *, compile_unpruned, batch_size,
             max_new_tokens, prompt_template, bar, keep_predictions):
    t0 = time.time()
    model = compiled_copy(base_model, method, budget, compile_unpruned=compile_unpruned)
    scores = evaluate_model(model, processor, datasets, batch_size, max_new_tokens,
                            prompt_template, bar)
    acc = {t: s.accuracy for t, s in scores.items()}
    from .compile import parse_method_spec
    name, opts = parse_method_spec(method)
    run = {"method": method, "method_name": name, "options": opts, "budget": budget, "accuracy": acc, "mean_accuracy": _mean(acc.values()),
           "correct": {t: s.correct for t, s in scores.items()},
           "total": {t: s.total for t, s in scores.items()}, "wall_s": round(time.time() - t0, 2)}
    if keep_predictions:
        run["predictions"] = {t: s.predictions for t, s in scores.items()}
    return run


def run_sweep(base_model, processor, datasets: dict, methods: list[str], budgets: list,
              *, compile_unpruned: bool = True, batch_size: int = 16, max_new_tokens: int = 8,
              prompt_template: str | None = None, keep_predictions: bool = False,
              progress: bool = True) -> dict:
    """Evaluate the unpruned baseline and each pruned configuration; return the result dict.

    ``"none"`` in ``methods`` is the baseline and always runs first (once, budget-free).
    A pruned configuration that raises is recorded as ``{"method", "budget", "error"}`` and the
    sweep goes on; a missing backend or an invalid option stops it.
    """
    pruned = [(m, b) for m in methods if m != NONE_METHOD for b in budgets]
    per_config = n_batches(datasets, batch_size)
    kw = dict(compile_unpruned=compile_unpruned, batch_size=batch_size,
              max_new_tokens=max_new_tokens, prompt_template=prompt_template,
              keep_predictions=keep_predictions)
    with tqdm(total=per_config * (1 + len(pruned)), desc="eval", unit="batch",
              disable=not progress, dynamic_ncols=True) as bar:
        bar.set_postfix_str("none")
        baseline = _run_one(base_model, processor, datasets, NONE_METHOD, None, bar=bar, **kw)
        runs = []
        for method, budget in pruned:
            bar.set_postfix_str(f"{method}@{budget}")
            try:
                run = _run_one(base_model, processor, datasets, method, budget, bar=bar, **kw)
            except (BackendUnavailableError, ValueError):
                raise  # configuration errors: nothing else would work either
            except Exception as e:  # one failing configuration must not lose the others
                msg = _short_error(e)
                print(f"\nvtp eval: {method}@{budget} failed: {msg}", file=sys.stderr)
                runs.append({"method": method, "budget": budget, "error": msg})
                continue
            run["retention"] = retention(run["accuracy"], baseline["accuracy"])
            base_mean = baseline["mean_accuracy"]
            run["mean_retention"] = 100.0 * run["mean_accuracy"] / base_mean if base_mean else None
            runs.append(run)
    return {"tasks": list(datasets), "n": {t: len(e) for t, e in datasets.items()},
            "compile_unpruned": "inductor" if compile_unpruned else "eager",
            "baseline": baseline, "runs": runs}


def format_table(result: dict) -> str:
    """Plain-text table: one row per configuration, accuracy (retention %) per task."""
    tasks = result["tasks"]
    head = ["method", "budget"] + tasks + ["mean"]
    rows = [["none (" + result["compile_unpruned"] + ")", "-"]
            + [f"{result['baseline']['accuracy'][t]:.3f}" for t in tasks]
            + [f"{result['baseline']['mean_accuracy']:.3f}"]]
    for run in result["runs"]:
        if "error" in run:
            rows.append([run["method"], str(run["budget"])] + ["error"] * (len(tasks) + 1))
            continue
        cells = []
        for t in tasks:
            r = run["retention"][t]
            cells.append(f"{run['accuracy'][t]:.3f} ({r:.0f}%)" if r is not None
                         else f"{run['accuracy'][t]:.3f} (-)")
        mr = run["mean_retention"]
        cells.append(f"{run['mean_accuracy']:.3f}" + (f" ({mr:.0f}%)" if mr is not None else ""))
        rows.append([run["method"], str(run["budget"])] + cells)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
