"""Every relative link in README.md, ARCHITECTURE.md and docs/*.md points at a file that exists.

A link with an anchor (`file.md#some-heading`, or `#some-heading` within the same page) must also name a
heading of the target Markdown file, by GitHub's rule for heading anchors: lowercase, punctuation other
than `-` and `_` dropped, spaces as `-`, a repeated heading gets `-1`, `-2`, ... Links to other sites
(`http://`, `https://`, `mailto:`) are not followed. Links inside code (fenced blocks, `inline code`) are
not links and are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def doc_files(root: Path = ROOT) -> list[Path]:
    files = [root / "README.md", root / "ARCHITECTURE.md", *sorted((root / "docs").glob("*.md"))]
    return [f for f in files if f.exists()]


def without_code(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    prose = without_code(text)
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """One line per link in `path` whose file (or heading) is missing."""
    problems = []
    for target in links(path.read_text(encoding="utf-8")):
        if not target or EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(root)}: link {target!r}"
        if not dest.exists():
            problems.append(f"{where}: no file {dest.relative_to(root) if dest.is_relative_to(root) else dest}")
        elif anchor and dest.suffix == ".md" and dest.is_file() and unquote(anchor).lower() not in anchors(dest):
            problems.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(root)}")
    return problems


def test_the_documentation_files_are_there():
    names = {str(f.relative_to(ROOT)) for f in doc_files()}
    assert {"README.md", "ARCHITECTURE.md"} <= names
    assert any(name.startswith("docs/") for name in names), "no docs/*.md found"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files_and_headings(path: Path):
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


def test_a_broken_link_is_caught(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# A page\n\n## Fast start: LiteRT\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n"
        "[ok](docs/there.md) [ok anchor](docs/there.md#fast-start-litert) [self](#title)\n"
        "[web](https://example.com/missing.md) `[code](missing-in-code.md)`\n\n"
        "```\n[fenced](missing-in-fence.md)\n```\n\n"
        "[gone](docs/missing.md) [bad anchor](docs/there.md#no-such-heading) [bad self](#nowhere)\n",
        encoding="utf-8")
    problems = broken_links(page, tmp_path)
    assert len(problems) == 3, problems
    assert "docs/missing.md" in problems[0]
    assert "#no-such-heading" in problems[1]
    assert "#nowhere" in problems[2]


@pytest.mark.parametrize("heading, anchor", [
    ("4. Evaluation protocol", "4-evaluation-protocol"),
    ("What `download` writes", "what-download-writes"),
    ("Fast start: LiteRT", "fast-start-litert"),
    ("Flickr30k and COCO", "flickr30k-and-coco"),
])
def test_heading_anchors_follow_github(heading: str, anchor: str):
    assert slug(heading) == anchor
