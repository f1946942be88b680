"""Fidelity benchmark: accuracy of pruned vs unpruned models on exact-match tasks.

- :mod:`.data` — scene task datasets and JSONL loading;
- :mod:`.evaluate` — batched greedy generation and exact-match scoring;
- :mod:`.compile` — a fresh compiled model copy per (method, budget);
- :mod:`.sweep` — the baseline + pruned sweep, retention, the text table;
- :mod:`.plot` — accuracy-vs-budget PNG;
- :mod:`.render` / :mod:`.show` — kept-token overlays for ``vtp show``.
"""
