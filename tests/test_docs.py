"""The README and docs/*.md: every relative link resolves to a file of the repository, and no
page names a file the repository does not have (design notes outside it, removed pages)."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# files that have been referenced but do not exist in the repository
MISSING = re.compile(r"(?<![\w/.-])(?:METHODS\.md|ARCHITECTURE\.md|COMPILE_NOTES\.md|FAMILIES\.md|"
                     r"SEEDS\.md|STYLE\.md|notes/[\w./-]+)|shared/design[\w./-]*|/work/[\w./-]+")
# lab-diary wording: a figure says which command and machine made it, not when
DIARY = re.compile(r"in this task|this session|no GPU was lent|was not lent|last round|"
                   r"\bstop \d+\b|stop \d+'s", re.I)


def _links(text):
    text = re.sub(r"```.*?```", "", text, flags=re.S)     # code blocks hold no links
    return [m.group(1) for m in LINK.finditer(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    bad = []
    for target in _links(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue                                       # URLs, mailto, in-page anchors
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            bad.append(target)
    assert not bad, f"{page.name}: links to missing files: {bad}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_to_files_outside_the_repository(page):
    text = page.read_text()
    assert not MISSING.findall(text), f"{page.name} names files the repository lacks"
    assert not DIARY.findall(text), f"{page.name}: lab-diary wording {DIARY.findall(text)}"


def test_the_readme_keeps_what_ci_and_newcomers_need():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "<!-- options: python -m vtp_compile.options_table -->" in readme
    assert "<!-- /options -->" in readme
    assert "## Adding a method" in readme and "docs/support.md" in readme
