"""What vtp did during a run: every graph it compiled, pruned or left unpruned and why.

Reads the reports vtp keeps with the model (:func:`vtp_compile.reports`), from a mark taken when
the run starts.
"""
from __future__ import annotations

from collections import Counter


def mark(model) -> int:
    """How many graphs vtp has compiled for ``model`` so far (the start of a run)."""
    from ...report import reports
    return len(reports(model))


def summarize(model, start: int = 0) -> dict:
    """JSON-ready summary of the graphs compiled since ``start``.

    ``pruned_graphs``: prefill graphs with at least one pruning site; ``decode_graphs``: decode
    graphs vtp rewrote (their masks read the compacted cache); ``unpruned``: reason -> how many
    graphs were compiled unpruned for it; ``sites``: the distinct site lines (visual counts and
    savings at the compile's example sizes).
    """
    from ...report import reports as _reports
    reports = _reports(model)[start:]
    unpruned = Counter(r.skipped for r in reports if r.skipped is not None)
    sites = list(dict.fromkeys(s.line() for r in reports for s in r.sites))
    return {
        "graphs": len(reports),
        "pruned_graphs": sum(1 for r in reports if r.sites),
        "decode_graphs": sum(1 for r in reports if r.skipped is None and r.phase == "decode"),
        "unpruned_graphs": sum(unpruned.values()),
        "unpruned": dict(unpruned),
        "sites": sites,
    }


def log_lines(summary: dict) -> list[str]:
    """Human-readable lines for the run's log."""
    lines = [f"vtp: {summary['graphs']} graph(s) compiled: {summary['pruned_graphs']} pruned "
             f"prefill, {summary['decode_graphs']} decode, {summary['unpruned_graphs']} left unpruned"]
    lines += [f"vtp: left unpruned ({n} graph(s)): {why}" for why, n in summary["unpruned"].items()]
    lines += summary["sites"]
    return lines
