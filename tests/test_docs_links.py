"""The documentation's links resolve: every relative link in README.md and docs/*.md names a
file that exists (and, for `file.md#anchor`, a heading of that file), and every `docs/NAME.md`
or `§N` reference in the code names a docs file and a numbered section that exist.

Sections are the numbered headings of a docs file (`## 3. Caches`, `### 4.1 Model files`);
code cites them as `docs/architecture.md §3`, and a bare `§N` refers to the nearest
`docs/NAME.md` before it (as in "docs/lfm2-facts.md §5 (tensors) and §6 (metadata)")."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
CODE = sorted(p for pattern in ("lfm2q/**/*.py", "convert/*.py", "tests/**/*.py", "benchmarks/*.py",
                                "training/*.py") for p in ROOT.glob(pattern)
              if p.resolve() != Path(__file__).resolve()) + [ROOT / "Makefile"]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
SECTION = re.compile(r"^(\d+(?:\.\d+)*)\.?\s")
DOC_REF = re.compile(r"docs/([\w.-]+\.md)")
SECTION_REF = re.compile(r"§\s*(\d+(?:\.\d+)*)")
NEAR = 200  # characters within which a bare § refers to the docs file named before it


def prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def headings(path: Path) -> list[str]:
    return [m.group(2) for m in HEADING.finditer(prose_headings(path.read_text(encoding="utf-8")))]


def prose_headings(text: str) -> str:  # headings keep their inline code (it is part of the slug)
    return re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.M | re.S)


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for h in headings(path):
        slug = re.sub(r"[^\w\- ]", "", h.replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def sections(path: Path) -> set[str]:
    return {m.group(1) for h in headings(path) if (m := SECTION.match(h))}


def links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(prose(page.read_text(encoding="utf-8")))
            if not re.match(r"[a-z][a-z0-9+.-]*:", m.group(1))]  # http:, https:, mailto: …


def test_there_are_docs_to_check():
    names = {p.name for p in DOCS}
    assert {"architecture.md", "kernels.md", "benchmarks.md", "hostile-input.md", "chat.md"} <= names
    assert (ROOT / "README.md").stat().st_size <= 15 * 1024


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    bad = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


def references(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, docs file, section or None) for each docs/… and § reference in a code file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    docs = [(m.start(), m.group(1)) for m in DOC_REF.finditer(text)]
    out = [(text.count("\n", 0, at) + 1, name, None) for at, name in docs]
    for m in SECTION_REF.finditer(text):
        before = [(at, name) for at, name in docs if at < m.start() and m.start() - at <= NEAR]
        name = before[-1][1] if before else "?"
        out.append((text.count("\n", 0, m.start()) + 1, name, m.group(1)))
    return out


def test_code_references_name_docs_sections_that_exist():
    bad = []
    for path in CODE:
        for line, name, section in references(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            doc = ROOT / "docs" / name
            if name == "?":
                bad.append(f"{where}: §{section} names no docs/NAME.md before it")
            elif not doc.is_file():
                bad.append(f"{where}: docs/{name} does not exist")
            elif section is not None and section not in sections(doc):
                bad.append(f"{where}: docs/{name} has no section {section}")
    assert not bad, "\n".join(bad)


def test_the_checker_catches_what_it_should(tmp_path):
    # Its own parts, on known text: a link to a missing heading, a § without a file.
    page = tmp_path / "p.md"
    page.write_text("# T\n\n## 2. The `make test` target — fast\n\n```\n[x](nowhere)\n```\n[a](p.md#2-the-make-test-target--fast) "
                    "[b](p.md#missing) `[c](code)`\n")
    assert anchors(page) == {"t", "2-the-make-test-target--fast"} and sections(page) == {"2"}
    assert links(page) == ["p.md#2-the-make-test-target--fast", "p.md#missing"]
    code = tmp_path / "m.py"
    code.write_text('"""See docs/chat.md §5 and §6; elsewhere §9."""\n' + "x = 1\n" * 80 + "# §3\n")
    assert references(code) == [(1, "chat.md", None), (1, "chat.md", "5"), (1, "chat.md", "6"),
                                (1, "chat.md", "9"), (82, "?", "3")]
