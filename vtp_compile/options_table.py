"""The README's options table, generated from the typed options (``config.COMMON_DOCS`` and
each method's options class): ``python -m vtp_compile.options_table`` rewrites the block after
the ``<!-- options: ... -->`` marker in README.md; ``--check`` fails when it is out of date."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

START = "<!-- options: python -m vtp_compile.options_table -->"
END = "<!-- /options -->"


def _value(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"`{v:g}`"
    return f"`{v!r}`" if not isinstance(v, str) or v.isidentifier() or v == "" else f"{v}"


def render() -> str:
    from .config import COMMON_DOCS
    from .methods.registry import get_method, method_names
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for key, (typ, default, doc) in COMMON_DOCS.items():
        lines.append(f"| `{key}` | {typ} | {_value(default)} | {doc} |")
    lines += ["", "Each method's own options (`options={\"method\": m, ...}`):", "",
              "| method | option | type | default | meaning |", "|---|---|---|---|---|"]
    for name in method_names():
        m = get_method(name)
        rows = m.options.table()
        if not rows:
            lines.append(f"| `{name}` | — | | | no options of its own |")
        for opt, typ, default, doc in rows:
            if opt == "stages":
                default = "divprune 1/3, then fastv 1/3"
            lines.append(f"| `{name}` | `{opt}` | {typ.replace('|', 'or')} | {_value(default)} | {doc} |")
    return "\n".join(lines)


def update(readme: Path, check: bool = False) -> bool:
    """Rewrite the block in ``readme``; returns whether it changed (``check``: only compare)."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render()}\n{END}{tail}"
    if new != text and not check:
        readme.write_text(new)
    return new != text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--readme", default=str(Path(__file__).resolve().parents[1] / "README.md"))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    changed = update(Path(args.readme), args.check)
    if args.check and changed:
        print("the options table in README.md is out of date: python -m vtp_compile.options_table")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
