#!/usr/bin/env python3
"""Offline check of a built HTML site (the book in ``_build/html``): nothing points nowhere.

For every ``.html`` file under the root it reports

- a relative link or resource (``href``, ``src``, ``srcset``, ``poster``, ``data``) whose
  target file does not exist: broken internal links, missing images, scripts, styles;
- a ``#fragment`` that names no ``id`` (or ``<a name>``) in the target page;
- what Sphinx leaves in a page for a reference it could not resolve: a citation with no
  link inside (sphinxcontrib-bibtex renders a missing key as ``[]``), an ``xref`` that is
  not a link (an unknown ``{ref}`` label or ``{doc}``), and docutils' ``problematic`` and
  ``system-message`` output.

External links (any URL with a scheme or a host: ``https:``, ``mailto:``, ``data:``, ...)
are not followed: the check is offline. Standard library only, so that ``make book`` can
run it with any Python::

    python tests/htmlcheck.py _build/html

prints one line per problem and exits 1 if there is any. ``tests/test_publishing.py``
tests the checker on a small tree with known faults, and runs it over ``_build/html``
when a book has been built.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Optional
from urllib.parse import unquote, urlsplit

# Attributes that name another file, per tag (``srcset`` is a list of "URL width" pairs).
URL_ATTRIBUTES = {
    "a": ("href",),
    "area": ("href",),
    "link": ("href",),
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "script": ("src",),
    "iframe": ("src",),
    "embed": ("src",),
    "track": ("src",),
    "audio": ("src",),
    "video": ("src", "poster"),
    "object": ("data",),
}
# Elements in which Sphinx renders references: a resolved one sits inside an <a>.
TRACKED = ("span", "code")
# Top-level folders of a Sphinx build whose .html files are not pages.
NOT_PAGES = ("_static", "_sources")
# <link rel=...> values that are hints to the browser, not files of the site.
LINK_HINTS = {"preconnect", "dns-prefetch"}


@dataclass(frozen=True)
class Problem:
    page: str  # path of the page, relative to the root
    kind: str  # "missing file", "missing anchor", "unresolved citation", "unresolved reference", ...
    detail: str

    def __str__(self) -> str:
        return f"{self.page}: {self.kind}: {self.detail}"


@dataclass
class _Open:
    tag: str
    kind: Optional[str]  # "citation" or "xref" when the element is one to watch
    text: str = ""
    has_link: bool = False


class _PageParser(HTMLParser):
    """Collects a page's ids, its links, and the unresolved-reference markers in it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[int, str, str]] = []  # (line, attribute, url)
        self.markers: list[tuple[int, str, str]] = []  # (line, kind, detail)
        self._stack: list[_Open] = []  # open <a>s and TRACKED elements, to see what lies inside what
        self._in_a = 0

    # -- structure
    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        values = {name: (value or "") for name, value in attrs}
        line = self.getpos()[0]
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "a" and values.get("name"):
            self.ids.add(values["name"])
        classes = set(values.get("class", "").split())
        if classes & {"problematic", "system-message"}:
            self.markers.append((line, "unresolved reference",
                                 f"docutils marked an element {sorted(classes & {'problematic', 'system-message'})}"))
        skip = tag == "link" and set(values.get("rel", "").lower().split()) & LINK_HINTS
        for attribute in URL_ATTRIBUTES.get(tag, ()):
            if attribute in values and not skip:
                if attribute == "srcset":
                    for candidate in values[attribute].split(","):
                        if candidate.strip():
                            self.links.append((line, attribute, candidate.strip().split()[0]))
                else:
                    self.links.append((line, attribute, values[attribute]))
        if tag == "a":
            self._in_a += 1
            for item in self._stack:
                item.has_link = True
            self._stack.append(_Open("a", None))
        elif tag in TRACKED:
            kind = None
            if "bibtex-citation" in classes:
                kind = "citation"
            elif "xref" in classes and not self._in_a:
                kind = "xref"
            self._stack.append(_Open(tag, kind))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "a" or tag in TRACKED:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag != "a" and tag not in TRACKED:
            return
        # Pop up to the matching open element (tolerates unclosed inner elements).
        for depth in range(len(self._stack) - 1, -1, -1):
            if self._stack[depth].tag == tag:
                closed = self._stack[depth:]
                del self._stack[depth:]
                for item in reversed(closed):
                    self._close(item)
                return

    def handle_data(self, data: str) -> None:
        for item in self._stack:
            if item.kind:
                item.text += data

    def _close(self, item: _Open) -> None:
        line = self.getpos()[0]
        text = " ".join(item.text.split())
        if item.tag == "a":
            self._in_a = max(0, self._in_a - 1)
        elif item.kind == "citation" and not item.has_link:
            self.markers.append((line, "unresolved citation",
                                 f"citation {text or '[]'} links to no bibliography entry (unknown bibtex key?)"))
        elif item.kind == "xref":
            self.markers.append((line, "unresolved reference", f"{text!r} is a cross-reference that links nowhere"))


@dataclass
class Page:
    ids: set[str]
    links: list[tuple[int, str, str]]
    markers: list[tuple[int, str, str]]


def parse_page(path: Path) -> Page:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return Page(parser.ids, parser.links, parser.markers)


def _is_external(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme or parts.netloc)


def check_site(root: Path) -> tuple[list[Problem], dict[str, int]]:
    """Check every ``.html`` file under ``root``. Returns (problems, counts)."""
    root = Path(root).resolve()
    if not root.is_dir():
        return [Problem(str(root), "missing site", "the folder does not exist (build the book first)")], {}
    # Pages only: Sphinx themes copy Jinja templates (webpack-macros.html) into _static/, and
    # _sources/ holds the page sources; links *into* those folders are still checked.
    pages_paths = sorted(p for p in root.rglob("*.html") if p.relative_to(root).parts[0] not in NOT_PAGES)
    if not pages_paths:
        return [Problem(str(root), "missing site", "no .html files in the folder")], {}
    pages: dict[Path, Page] = {}

    def page_at(path: Path) -> Page:
        if path not in pages:
            pages[path] = parse_page(path)
        return pages[path]

    problems: list[Problem] = []
    counts = {"pages": len(pages_paths), "internal links": 0, "external links": 0}
    for path in pages_paths:
        name = path.relative_to(root).as_posix()
        page = page_at(path)
        for line, kind, detail in page.markers:
            problems.append(Problem(name, kind, f"line {line}: {detail}"))
        for line, attribute, url in page.links:
            url = url.strip()
            if not url or url.startswith("javascript:"):
                continue
            if _is_external(url):
                counts["external links"] += 1
                continue
            counts["internal links"] += 1
            parts = urlsplit(url)
            target_path = unquote(parts.path)
            fragment = unquote(parts.fragment)
            if not target_path:
                target = path  # "#fragment" (or "?query") on the same page
            else:
                if target_path.startswith("/"):
                    problems.append(Problem(name, "absolute path",
                                            f"line {line}: {attribute}={url!r}: only works at the server's root; "
                                            f"use a relative link"))
                    continue
                target = (path.parent / PurePosixPath(target_path)).resolve()
                if target.is_dir():
                    target = target / "index.html"
                try:
                    target.relative_to(root)
                except ValueError:
                    problems.append(Problem(name, "outside the site", f"line {line}: {attribute}={url!r}"))
                    continue
                if not target.is_file():
                    problems.append(Problem(name, "missing file", f"line {line}: {attribute}={url!r}"))
                    continue
            if fragment and target.suffix == ".html" and fragment not in page_at(target).ids:
                where = "this page" if target == path else target.relative_to(root).as_posix()
                problems.append(Problem(name, "missing anchor",
                                        f"line {line}: {attribute}={url!r}: no id {fragment!r} in {where}"))
    return problems, counts


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python tests/htmlcheck.py SITE_DIR   (e.g. _build/html)", file=sys.stderr)
        return 2
    problems, counts = check_site(Path(args[0]))
    for problem in problems:
        print(problem)
    summary = ", ".join(f"{value} {key}" for key, value in counts.items())
    if problems:
        print(f"htmlcheck: {len(problems)} problem(s) in {args[0]} ({summary})")
        return 1
    print(f"htmlcheck: {args[0]} is consistent ({summary}; external links not followed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
