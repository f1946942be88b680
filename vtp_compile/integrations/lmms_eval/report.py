"""What vtp did during a run: every graph it compiled, pruned or left unpruned and why.

Reads :data:`vtp_compile.passes.manager.REPORTS` (one entry per compiled graph, appended by the
backend) from a mark taken when the run starts.
"""
from __future__ import annotations

from collections import Counter


def mark() -> int:
    """The current length of ``REPORTS`` (the start of a run)."""
    from ...passes.manager import REPORTS
    return len(REPORTS)


def summarize(start: int = 0) -> dict:
    """JSON-ready summary of the graphs compiled since ``start``.

    ``pruned_graphs``: prefill graphs with at least one pruning site; ``decode_graphs``: decode
    graphs vtp rewrote (their masks read the compacted cache); ``unpruned``: reason -> how many
    graphs were compiled unpruned for it; ``sites``: the distinct site lines (visual counts and
    savings at the compile's example sizes).
    """
    from ...passes.manager import REPORTS
    reports = REPORTS[start:]
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
