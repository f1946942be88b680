"""Accuracy-vs-budget plot of a sweep result (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path


def plot_accuracy(result: dict, path: str | Path, ylabel: str = "exact-match accuracy",
                  ylim: tuple[float, float] | None = (-0.02, 1.02)) -> Path:
    """One panel per task plus the mean: accuracy vs budget, a line per method, and the
    unpruned accuracy as a dashed line. Returns the written path. ``ylim=None`` scales each
    panel to its data (scores that are not fractions, e.g. from lmms-eval tasks)."""
    from ..extras import require
    require("matplotlib", "an accuracy plot")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(result["tasks"]) + ["mean"]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    ok_runs = [r for r in result["runs"] if "error" not in r]
    methods = list(dict.fromkeys(r["method"] for r in ok_runs))

    def value(run, panel):
        return run["mean_accuracy"] if panel == "mean" else run["accuracy"][panel]

    for ax, panel in zip(axes.flat, panels):
        if len(methods) > 10:    # the default cycle repeats after 10 colours
            ax.set_prop_cycle(color=plt.cm.tab20.colors)
        for m in methods:
            pts = sorted((float(r["budget"]), value(r, panel))
                         for r in ok_runs if r["method"] == m)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=m)
        ax.axhline(value(result["baseline"], panel), color="k", ls="--", lw=1, label="unpruned")
        ax.set_title(panel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xlabel("visual tokens kept (or ratio)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
