"""The documentation's links: every relative link in README.md and docs/*.md names a file
in the repository (and, with a `#fragment`, a heading of that file), and the README stays a
front door of at most 200 lines.

Links are read as Markdown writes them, `[text](target)`, `![alt](target)` and reference
definitions `[label]: target`, outside fenced code blocks and inline code. Fragments are
matched against headings slugged as GitHub slugs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+).*?\1")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class Link:
    document: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}: {self.target}"


def unfenced_lines(text: str) -> list[tuple[int, str]]:
    """Numbered lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def links_in(document: Path) -> list[Link]:
    found = []
    for number, line in unfenced_lines(document.read_text(encoding="utf-8")):
        line = _CODE_SPAN.sub("", line)  # `[x](y)` in code is an example, not a link
        targets = _INLINE_LINK.findall(line)
        reference = _REFERENCE.match(line)
        if reference:
            targets.append(reference.group(1))
        found += [Link(document, number, target) for target in targets]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def anchors_of(document: Path) -> set[str]:
    anchors: set[str] = set()
    for _, line in unfenced_lines(document.read_text(encoding="utf-8")):
        heading = _HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            anchor, repeat = base, 0
            while anchor in anchors:  # GitHub numbers repeated headings: x, x-1, x-2
                repeat += 1
                anchor = f"{base}-{repeat}"
            anchors.add(anchor)
    return anchors


def broken(link: Link) -> str | None:
    """Why `link` does not resolve, or None when it does (or is not a relative link)."""
    if _SCHEME.match(link.target) or link.target.startswith("//"):
        return None  # a URL: not this test's business
    path_part, _, fragment = link.target.partition("#")
    target = (link.document.parent / unquote(path_part)).resolve() if path_part else link.document
    if not target.is_relative_to(ROOT):
        return "points outside the repository"
    if not target.is_file():
        return "no such file"
    if fragment and target.suffix == ".md" and fragment not in anchors_of(target):
        return f"no heading #{fragment} in {target.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(document: Path):
    problems = [f"{link} ({why})" for link in links_in(document) if (why := broken(link))]
    assert problems == []


def test_the_documents_are_there_and_link_to_each_other():
    names = {path.name for path in DOCUMENTS}
    expected = {"architecture.md", "protocol.md", "behaviour.md", "operations.md", "gateway.md"}
    assert expected <= names
    readme_targets = {link.target.partition("#")[0] for link in links_in(ROOT / "README.md")}
    for name in sorted(expected | {"configuration.md"}):
        assert f"docs/{name}" in readme_targets, f"README.md does not link docs/{name}"


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    text = "\n".join(lines)
    for command in ("./dev demo", "./dev test"):
        assert command in text, f"README.md lost `{command}`"


def test_links_are_read_outside_code_only(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n"
        'See [a](a.md), ![b](img/b.png "B") and `[not](code.md)`.\n'
        "```\n[fenced](fenced.md)\n```\n"
        "[ref]: <ref.md#part>\n"
        "Also [web](https://example.com) and [here](#title).\n",
        encoding="utf-8",
    )
    assert [link.target for link in links_in(page)] == [
        "a.md",
        "img/b.png",
        "ref.md#part",
        "https://example.com",
        "#title",
    ]


def test_missing_files_and_headings_are_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# A chunk's path\n\n## Security: origin and token\n\n```bash\n# not a heading\n```\n",
        encoding="utf-8",
    )
    assert broken(Link(page, 1, "#a-chunks-path")) is None
    assert broken(Link(page, 1, "page.md#security-origin-and-token")) is None
    assert broken(Link(page, 1, "https://example.com/nowhere.md")) is None
    assert broken(Link(page, 1, "missing.md")) == "no such file"
    assert broken(Link(page, 1, "#nowhere")) == "no heading #nowhere in docs/page.md"
    assert broken(Link(page, 1, "#not-a-heading")) == "no heading #not-a-heading in docs/page.md"
    assert broken(Link(page, 1, "../../outside.md")) == "points outside the repository"
    assert broken(Link(page, 1, ".")) == "no such file"  # a folder is not a file
