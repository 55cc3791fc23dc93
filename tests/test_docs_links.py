"""The documentation a newcomer reads holds together: every relative link of README.md and docs/*.md resolves to a
file of the repository (and a ``#anchor`` to one of its headings, by GitHub's slug rules), and the README stays
short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def documentation_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, with their 1-based numbers (links and headings in code do not count)."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            fence = None
        elif fence is None:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, punctuation but '-' and '_' dropped, spaces
    to hyphens (github-slugger, as github.com renders Markdown)."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"(\*\*|\*|~~)", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a page offers: its headings' slugs, repeated ones numbered -1, -2, ... as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """The link targets of a page outside code (inline and reference-style), with their line numbers."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        prose = INLINE_CODE.sub("", line)
        found += [(number, target) for target in LINK.findall(prose)]
        reference = REFERENCE.match(prose)
        if reference:
            found.append((number, reference.group(1)))
    return found


def broken_links(path: Path) -> list[str]:
    """One line per relative link of ``path`` that GitHub would not resolve."""
    problems = []
    for number, target in links(path):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue  # an absolute URL: not this repository's to check
        file_part, _, anchor = target.partition("#")
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        destination = (path.parent / file_part).resolve() if file_part else path
        if file_part and ROOT not in destination.parents and destination != ROOT:
            problems.append(f"{where}: leaves the repository")
        elif not destination.exists():
            problems.append(f"{where}: {file_part} does not exist")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{where}: no heading of {destination.relative_to(ROOT)} has the anchor #{anchor}")
    return problems


@pytest.mark.parametrize("path", documentation_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_docs_pages_are_linked_from_the_index():
    """Every page of docs/ is reachable from the index a newcomer opens."""
    linked = {(ROOT / "docs" / target.partition("#")[0]).resolve() for _, target in links(ROOT / "docs" / "README.md")}
    orphans = [p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md" and p.resolve() not in linked]
    assert orphans == []


def test_github_slug_rules():
    """The slugs the link check compares against, on headings of the kinds the pages use."""
    assert github_slug("Export: ONNX and TorchScript") == "export-onnx-and-torchscript"
    assert (
        github_slug("The thesis' question from a multi-label model") == "the-thesis-question-from-a-multi-label-model"
    )
    assert github_slug("Evaluating `evaluate.py` runs") == "evaluating-evaluatepy-runs"
    assert github_slug("The real NIH ChestX-ray14 data") == "the-real-nih-chestx-ray14-data"
    assert github_slug("What A, B and C share") == "what-a-b-and-c-share"


def test_the_check_finds_a_broken_link(tmp_path, monkeypatch):
    """A missing file and a missing anchor are reported with their line; links in code are not links."""
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    page = tmp_path / "docs" / "a.md"
    page.parent.mkdir()
    page.write_text(
        "# A page\n\n## Real heading\n\n```bash\n[in code](missing.md)\n```\n"
        "[ok](#real-heading) [bad](#no-such) [gone](missing.md) `[code](x.md)` [out](../../x.md)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "docs/a.md:8: #no-such: no heading of docs/a.md has the anchor #no-such",
        "docs/a.md:8: missing.md: missing.md does not exist",
        "docs/a.md:8: ../../x.md: leaves the repository",
    ]
