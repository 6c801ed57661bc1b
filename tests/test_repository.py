"""Repository conventions that the book, CI and Colab rely on.

Notebooks: committed without outputs; a Colab badge with the notebook's own path; install
the package only on Colab, from this repository (it is not on PyPI); read quick mode from
``STYLERIG_LITE_QUICK``; chapters follow the skeleton (title, "What you will
learn", numbered sections, Summary, Exercises); code cells fit the page, every figure cell has a
numbered caption in its metadata, no cell prints a network or JSON as content, and the Colab and
parameters cells are hidden in the HTML. Book: every notebook is in ``_toc.yml``,
every listed file exists, every citation is in ``book/references.bib``. Packaging: the
extras exist and the CI lock satisfies every requirement. Links: README badges and
``pyproject.toml`` name the repository that ``_config.yml`` names; the README's first screen
has the badges, a picture and the two commands. Publishing (workflows, Binder, citation, the
built HTML) is checked in ``tests/test_publishing.py``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
QUICK_ENV = "STYLERIG_LITE_QUICK"

# Scratch notebooks start with "_": neither in the book nor tested. Every other notebook is in
# the book, executed by `make book` and opened from Colab (install cell, quick mode, badge);
# chapters, whose names start with a digit, also follow the chapter skeleton.
BOOK_NOTEBOOKS = sorted(p for p in NOTEBOOK_DIR.glob("*.ipynb") if not p.name.startswith("_"))
CHAPTERS = [p for p in BOOK_NOTEBOOKS if p.name[0].isdigit()]
ALL_NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def load_notebook(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cell_source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def code_cells(nb: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def markdown_headings(nb: dict[str, Any]) -> list[tuple[int, str]]:
    """(level, text) of every markdown heading, in order, ignoring fenced code blocks."""
    headings = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        in_fence = False
        for line in cell_source(cell).splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                in_fence = not in_fence
                continue
            match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
            if match and not in_fence:
                headings.append((len(match.group(1)), match.group(2)))
    return headings


def read_yaml(name: str) -> dict[str, Any]:
    with open(REPO / name, encoding="utf-8") as f:
        return yaml.safe_load(f)


def repository() -> tuple[str, str, str]:
    """(owner, name, branch) from _config.yml, the one place that names the repository."""
    repo = read_yaml("_config.yml")["repository"]
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)/?", repo["url"])
    assert match, f"_config.yml repository.url must be https://github.com/OWNER/REPO, got {repo['url']!r}"
    return match.group(1), match.group(2), repo["branch"]


# ------------------------------------------------------------------------------- notebooks


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = load_notebook(path)
    dirty = [
        i for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or execution counts; clear them before committing "
        f"(e.g. `jupyter nbconvert --clear-output --inplace {path.relative_to(REPO)}`)"
    )
    assert "papermill" not in nb.get("metadata", {}), (
        f"{path.name} is a papermill-executed copy; commit the source notebook, not the one from _build/"
    )


#: Code cells still longer than MAX_CELL_LINES (notebook -> cell ids), each to be split or moved into the
#: package (issue 25). The list may only shrink: a new long cell fails, and so does a listed one that
#: was fixed (remove it here).
LONG_CELLS_TO_SPLIT: dict[str, set[str]] = {}
MAX_LINE = 88  # the HTML book cuts code lines off past this width
MAX_CELL_LINES = 25


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_notebook_code_fits_the_page(path: Path) -> None:
    """Code lines within 88 columns (a `%pip install` of a git URL excepted); cells of at most 25 lines."""
    wide, long_cells = [], set()
    for cell in code_cells(load_notebook(path)):
        lines = cell_source(cell).rstrip("\n").split("\n")
        wide += [f"cell {cell.get('id')}: {line.strip()[:60]}... ({len(line)} columns)" for line in lines
                 if len(line) > MAX_LINE and not re.match(r"\s*%pip install .*git\+https://", line)]
        if len(lines) > MAX_CELL_LINES:
            long_cells.add(cell.get("id"))
    assert not wide, f"{path.name}: code lines wider than {MAX_LINE} columns:\n" + "\n".join(wide)
    listed = LONG_CELLS_TO_SPLIT.get(path.name, set())
    assert long_cells <= listed, (f"{path.name}: code cells {sorted(long_cells - listed)} have more than "
                                  f"{MAX_CELL_LINES} lines; split them or move the code into stylerig_lite")
    assert listed <= long_cells, f"{path.name}: cells {sorted(listed - long_cells)} are short now; unlist them"


#: Notebooks that do not yet follow the figure conventions below (a caption on every figure, no raw dumps,
#: the Colab and parameters cells hidden in the HTML), issue 25. Empty: every book notebook follows them. The
#: set may only shrink: a listed notebook that follows them all fails too (remove it here).
NOTEBOOKS_TO_CAPTION: set[str] = set()
PLOTTING = REPO / "stylerig_lite" / "plotting.py"
#: Figure-drawing functions outside stylerig_lite.plotting (an animation is a figure in the book).
OTHER_FIGURE_FUNCTIONS = {"animation_html"}


def figure_functions() -> set[str]:
    """The functions of stylerig_lite.plotting that draw a figure: those that call ``plt.subplots`` or
    ``plt.figure``, or another such function. Read from the source, so nothing needs importing."""
    called: dict[str, set[str]] = {}
    for node in ast.parse(PLOTTING.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name != "main":  # main writes files
            called[node.name] = {_call_name(c) for c in ast.walk(node) if isinstance(c, ast.Call)}
    drawers = {name for name, calls in called.items() if calls & {"plt.subplots", "plt.figure"}}
    while True:
        more = {name for name, calls in called.items() if calls & drawers} - drawers
        if not more:
            return drawers | OTHER_FIGURE_FUNCTIONS
        drawers |= more


def _call_name(call: ast.Call) -> str:
    """``f`` for ``f(...)``, ``plt.show`` for ``plt.show(...)``, ``plotting.image_grid`` for a module's
    function; "" for anything else."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return ""


def cell_tree(cell: dict[str, Any]) -> ast.Module:
    """A code cell's syntax tree, with IPython's `%magic` and `!shell` lines read as `pass`."""
    lines = [re.sub(r"^(\s*)[%!].*$", r"\1pass", line) for line in cell_source(cell).splitlines()]
    return ast.parse("\n".join(lines))


def draws_figure(cell: dict[str, Any], drawers: set[str]) -> bool:
    """Whether a code cell draws a figure: it calls `plt.<anything>`, a `show_*` function or one of
    ``drawers`` (directly or as `module.name`)."""
    for node in ast.walk(cell_tree(cell)):
        if isinstance(node, ast.Call):
            name = _call_name(node)
            short = name.rpartition(".")[2]
            if name.startswith("plt.") or short.startswith("show_") or short in drawers:
                return True
    return False


def figure_cells(path: Path) -> list[dict[str, Any]]:
    drawers = figure_functions()
    return [c for c in code_cells(load_notebook(path)) if draws_figure(c, drawers)]


def figure_options(cell: dict[str, Any]) -> dict[str, Any]:
    """The MyST-NB figure options of a cell (`metadata.mystnb.figure`: caption, name), or {}."""
    return cell.get("metadata", {}).get("mystnb", {}).get("figure", {})


def raw_dumps(cell: dict[str, Any]) -> list[str]:
    """Raw dumps shown as content: `print(x)` of a bare object (a network's repr) and `json.dumps(...)`."""
    found = []
    for node in ast.walk(cell_tree(cell)):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        if name == "print" and len(node.args) == 1 and isinstance(node.args[0], (ast.Name, ast.Attribute)):
            found.append(ast.unparse(node))
        elif name == "json.dumps":
            found.append(ast.unparse(node))
    return found


def hidden_cell_problems(path: Path) -> list[str]:
    """What keeps the Colab install cell (the first code cell: `remove-cell`) and the `parameters` cell
    (`hide-cell`) from being hidden in the HTML book."""
    nb = load_notebook(path)
    problems = []
    first = code_cells(nb)[0]
    if "remove-cell" not in first.get("metadata", {}).get("tags", []):
        problems.append(f"the Colab install cell {first.get('id')} is not tagged `remove-cell`")
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags and "hide-cell" not in tags:
            problems.append(f"the `parameters` cell {cell.get('id')} is not tagged `hide-cell`")
    return problems


def figure_convention_problems(path: Path) -> list[str]:
    problems = [f"code cell {c.get('id')} draws a figure without a caption" for c in figure_cells(path)
                if not str(figure_options(c).get("caption", "")).strip()]
    problems += [f"code cell {c.get('id')} shows a raw dump: {dump}"
                 for c in code_cells(load_notebook(path)) for dump in raw_dumps(c)]
    return problems + hidden_cell_problems(path)


def test_figure_cell_heuristics() -> None:
    """The checks below on known cells: what counts as a figure, a raw dump, a hidden cell."""
    drawers = figure_functions()
    assert {"image_grid", "edit_grid", "tradeoff_plot", "rignet_diagram", "animation_html"} <= drawers
    assert not {"to_unit", "to_numpy_image", "overlay_landmarks", "main"} & drawers

    def code(source: str, **metadata: Any) -> dict[str, Any]:
        return {"cell_type": "code", "source": source, "metadata": metadata}

    assert draws_figure(code("fig, ax = plt.subplots()\nax.plot([1, 2])"), drawers)
    assert draws_figure(code("image_grid(images, ncols=4);"), drawers)
    assert draws_figure(code("fig = plotting.edit_grid(edited)"), drawers)
    assert draws_figure(code("state.show_frame()"), drawers)
    assert not draws_figure(code("from stylerig_lite.plotting import image_grid\nx = to_unit(y)"), drawers)
    assert not draws_figure(code('%pip install -q "x"\nprint(1)'), drawers)
    assert raw_dumps(code("print(G)")) == ["print(G)"]
    assert raw_dumps(code("print(json.dumps(entry, indent=1))")) == ["json.dumps(entry, indent=1)"]
    assert raw_dumps(code('print(f"{G.num_ws} layers")\nprint("ws:", tuple(ws.shape))')) == []


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS, ids=_ids(BOOK_NOTEBOOKS))
def test_notebook_figures_have_captions_and_no_raw_dumps(path: Path) -> None:
    """Every figure cell carries a MyST-NB caption (numbered in the book), no cell prints a network or a
    JSON dump as content, and the Colab and parameters cells are hidden in the HTML (issue 25)."""
    problems = figure_convention_problems(path)
    if path.name in NOTEBOOKS_TO_CAPTION:
        assert problems, f"{path.name} follows the figure conventions now; remove it from NOTEBOOKS_TO_CAPTION"
        pytest.skip(f"{path.name} is listed in NOTEBOOKS_TO_CAPTION")
    assert not problems, (
        f"{path.name}:\n  " + "\n  ".join(problems) + "\nGive each figure cell a caption in its metadata, "
        '{"mystnb": {"figure": {"caption": "...", "name": "fig-<chapter>-<short>"}}}, one figure per cell; '
        "print summaries in words rather than objects or JSON; tag the Colab cell `remove-cell` and the "
        "`parameters` cell `hide-cell`")


def test_figure_names_are_unique_and_each_captioned_cell_draws_one_figure() -> None:
    """Figure names are labels of the whole book: two alike fail the build (`-W`). A captioned cell shows
    one figure, so the caption and the name belong to it: no `plt.show()` in a loop, at most one."""
    names: dict[str, str] = {}
    for path in BOOK_NOTEBOOKS:
        for cell in code_cells(load_notebook(path)):
            options = figure_options(cell)
            if not options:
                continue
            where = f"{path.name} cell {cell.get('id')}"
            name = str(options.get("name", ""))
            assert re.fullmatch(r"fig-[a-z0-9]+(-[a-z0-9]+)+", name), (
                f"{where}: figure name {name!r} must look like fig-<chapter>-<short>")
            assert name not in names, f"{where}: figure name {name} is also used by {names[name]}"
            names[name] = where
            tree = cell_tree(cell)
            shows = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _call_name(n) == "plt.show"]
            in_loops = [n for loop in ast.walk(tree) if isinstance(loop, (ast.For, ast.While))
                        for n in ast.walk(loop) if isinstance(n, ast.Call)
                        and _call_name(n).rpartition(".")[2] in {"show", "animation_html"}]
            assert len(shows) <= 1 and not in_loops, (
                f"{where} draws several figures under one caption; split it into one cell per figure")


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS, ids=_ids(BOOK_NOTEBOOKS))
def test_notebook_installs_package_only_on_colab(path: Path) -> None:
    owner, name, _ = repository()
    cells = code_cells(load_notebook(path))
    assert cells, f"{path.name} has no code cells"
    source = cell_source(cells[0])
    lines = source.splitlines()
    guard = [i for i, line in enumerate(lines) if re.match(r"""^if\s+["']google\.colab["']\s+in\s+sys\.modules\s*:""", line)]
    assert guard, (
        f"{path.name}: the first code cell must install the package under "
        f"`if \"google.colab\" in sys.modules:`; it is:\n{source}"
    )
    pip_lines = [i for i, line in enumerate(lines) if re.search(r"pip\b.*\binstall|['\"]pip['\"],\s*['\"]install", line)]
    assert pip_lines, f"{path.name}: the first code cell has no pip install:\n{source}"
    for i in pip_lines:
        assert i > guard[0] and lines[i][:1].isspace(), (
            f"{path.name}: `{lines[i].strip()}` must be indented inside the google.colab guard, "
            f"so that the package is installed only on Colab"
        )
        # The package is not on PyPI: Colab must install it from this repository. The only other line
        # allowed installs the pins of requirements/nodeps.txt with --no-deps (as make venv does).
        requirements = pip_install_requirements(lines[i])
        if "--no-deps" in lines[i].split():
            nodeps = {line.strip() for line in (REPO / "requirements" / "nodeps.txt").read_text().splitlines()
                      if line.strip() and not line.startswith("#")}
            assert set(requirements) == nodeps, (
                f"{path.name}: `{lines[i].strip()}` must install exactly requirements/nodeps.txt: {sorted(nodeps)}")
            continue
        assert requirements, f"{path.name}: `{lines[i].strip()}` installs nothing"
        for requirement in requirements:
            assert re.search(rf"git\+https://github\.com/{re.escape(owner)}/{re.escape(name)}(\.git)?(@[\w./-]+)?$",
                             requirement), (
                f"{path.name}: `{lines[i].strip()}` installs {requirement!r}; the first cell must install "
                f"only this package, from git+https://github.com/{owner}/{name} (_config.yml's repository), "
                f"never a name from PyPI"
            )
            # A pinned release, not the moving main: the tag of this package version.
            from stylerig_lite import __version__

            assert requirement.endswith(f"@v{__version__}"), (
                f"{path.name}: `{lines[i].strip()}` must pin the release tag v{__version__} (stylerig_lite.__version__), "
                f"so a reader's Colab runs the code the chapter was written for")


def pip_install_requirements(line: str) -> list[str]:
    """The requirement arguments of a `%pip install ...` / `!pip install ...` line (options dropped)."""
    words = shlex.split(line.strip(), comments=True)
    if "install" not in words:
        return []
    requirements, skip_value = [], False
    for word in words[words.index("install") + 1:]:
        if skip_value:
            skip_value = False
        elif word in {"-r", "-c", "-e", "--requirement", "--constraint", "--editable", "-i", "--index-url",
                      "--extra-index-url", "-f", "--find-links", "-t", "--target"}:
            skip_value = word not in {"-e", "--editable"}  # an editable target is a requirement too
        elif not word.startswith("-"):
            requirements.append(word)
    return requirements


def colab_badge_url(notebook: Path) -> str:
    owner, name, branch = repository()
    return f"https://colab.research.google.com/github/{owner}/{name}/blob/{branch}/notebooks/{notebook.name}"


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS, ids=_ids(BOOK_NOTEBOOKS))
def test_notebook_has_colab_badge_with_its_path(path: Path) -> None:
    first = load_notebook(path)["cells"][0]
    source = cell_source(first)
    urls = re.findall(r"https://colab\.research\.google\.com/github/[^\s)\]\"']+", source)
    expected = colab_badge_url(path)
    assert urls == [expected], (
        f"{path.name}: the first cell must carry exactly one Colab badge linking to\n  {expected}\n"
        f"(owner/repository from _config.yml's repository.url, branch {repository()[2]}); found {urls}"
    )
    assert re.search(r"\[!\[[^\]]*\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]\("
                     + re.escape(expected) + r"\)", source), (
        f"{path.name}: the Colab link must be the badge `[![Open In Colab](https://colab.research.google.com/"
        f"assets/colab-badge.svg)]({expected})`"
    )


def _quick_expression(path: Path) -> ast.expr:
    nb = load_notebook(path)
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged `parameters`, found {len(tagged)}"
    cell = tagged[0]
    assert cell["cell_type"] == "code", f"{path.name}: the `parameters` cell must be a code cell"
    tree = ast.parse(cell_source(cell))
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "quick" for t in targets) and node.value is not None:
                return node.value
    raise AssertionError(f"{path.name}: the `parameters` cell does not assign `quick`")


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS, ids=_ids(BOOK_NOTEBOOKS))
def test_notebook_reads_quick_mode_from_environment(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expression = _quick_expression(path)
    text = ast.unparse(expression)
    assert QUICK_ENV in text, f"{path.name}: `quick = {text}` must read the {QUICK_ENV} environment variable"
    code = compile(ast.Expression(expression), f"{path.name}:parameters", "eval")
    for value, expected in (("1", True), ("0", False)):
        monkeypatch.setenv(QUICK_ENV, value)
        try:
            quick = eval(code, {"os": os})  # the expression only, with `os` available
        except Exception as error:
            raise AssertionError(f"{path.name}: `quick = {text}` must be computable from `os` alone: {error!r}")
        assert bool(quick) is expected, f"{path.name}: with {QUICK_ENV}={value}, `quick = {text}` gives {quick!r}"
    monkeypatch.delenv(QUICK_ENV)
    assert not eval(code, {"os": os}), f"{path.name}: quick mode must be off when {QUICK_ENV} is unset"


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_follows_skeleton(path: Path) -> None:
    nb = load_notebook(path)
    headings = markdown_headings(nb)
    assert nb["cells"], f"{path.name} is empty"
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and cell_source(first).lstrip().startswith("# "), (
        f"{path.name}: the first cell must be markdown starting with the chapter title (`# Title`)"
    )
    titles = [text for level, text in headings if level == 1]
    assert len(titles) == 1, f"{path.name}: exactly one `# ` title expected, found {titles}"
    for (level_a, text_a), (level_b, text_b) in zip(headings, headings[1:]):
        assert level_b <= level_a + 1, (
            f"{path.name}: heading {text_b!r} (level {level_b}) follows {text_a!r} (level {level_a}); "
            f"skipping a level breaks the book build with -W"
        )

    def position(pattern: str) -> int:
        found = [i for i, (level, text) in enumerate(headings) if level == 2 and re.fullmatch(pattern, text, re.I)]
        assert found, f"{path.name}: missing the `## ` heading matching {pattern!r}; headings: {headings}"
        return found[0]

    learn, summary, exercises = position(r"What you will learn"), position(r"Summary"), position(r"Exercises")
    numbered = [(i, int(m.group(1))) for i, (level, text) in enumerate(headings)
                if level == 2 and (m := re.match(r"(\d+)\.\s+\S", text))]
    numbers = [n for _, n in numbered]
    assert numbers and numbers == list(range(1, len(numbers) + 1)), (
        f"{path.name}: numbered sections must be `## 1. ...`, `## 2. ...` in order; found {numbers}"
    )
    assert learn < numbered[0][0] and numbered[-1][0] < summary < exercises, (
        f"{path.name}: order must be What you will learn, ## 1. ... ## {numbers[-1]}., Summary, Exercises"
    )


# ------------------------------------------------------------------------------- the book


def toc_files() -> list[str]:
    toc = read_yaml("_toc.yml")
    assert toc.get("format") == "jb-book", "_toc.yml must use `format: jb-book`"

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if "file" in node:
                yield node["file"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return [toc["root"], *walk({k: v for k, v in toc.items() if k != "root"})]


def test_toc_lists_existing_files_once() -> None:
    files = toc_files()
    duplicates = sorted({f for f in files if files.count(f) > 1})
    assert not duplicates, f"_toc.yml lists these more than once: {duplicates}"
    missing = [f for f in files if not any((REPO / f"{f}{ext}").is_file() for ext in ("", ".md", ".ipynb"))]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_toc_lists_every_notebook_in_chapter_order() -> None:
    listed = [f for f in toc_files() if f.startswith("notebooks/")]
    expected = [f"notebooks/{p.stem}" for p in BOOK_NOTEBOOKS]
    absent = [f for f in expected if f not in listed and f"{f}.ipynb" not in listed]
    assert not absent, f"_toc.yml does not list {absent}; add `- file: <name>` lines (without .ipynb)"
    chapters = [f.removesuffix(".ipynb") for f in listed if Path(f).name[0].isdigit()]
    assert chapters == sorted(chapters), f"_toc.yml lists the chapters out of order: {chapters}"


def test_citations_exist_in_bibliography() -> None:
    bib = (REPO / "book" / "references.bib").read_text(encoding="utf-8")
    keys = re.findall(r"^@\w+\{([^,\s]+),", bib, flags=re.M)
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicates, f"book/references.bib defines these keys twice: {duplicates}"
    texts = {str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in (REPO / "book").rglob("*.md")}
    for path in BOOK_NOTEBOOKS:
        nb = load_notebook(path)
        texts[str(path.relative_to(REPO))] = "\n".join(cell_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    unknown = {}
    for name, text in texts.items():
        cited = {k.strip() for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text) for k in group.split(",")}
        if cited - set(keys):
            unknown[name] = sorted(cited - set(keys))
    assert not unknown, f"citations missing from book/references.bib: {unknown}"


# ------------------------------------------------------------------------------- packaging


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def load_pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def load_lock() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((REPO / "requirements" / "ci.txt").read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert match, f"requirements/ci.txt line {number} is not an exact `name==version` pin: {line!r}"
        pins[_normalize(match.group(1))] = match.group(2)
    return pins


def test_pyproject_declares_extras_and_console_script() -> None:
    project = load_pyproject()["project"]
    extras = {name: {_normalize(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in reqs}
              for name, reqs in project["optional-dependencies"].items()}
    assert {"jupyter-book", "papermill", "ipykernel", "jupyterlab", "voila"} <= extras.get("book", set())
    assert {"pytest", "pytest-timeout", "nbval", "papermill", "playwright"} <= extras.get("test", set())
    assert "easypytorch3d" in extras.get("pytorch3d", set())
    assert project["scripts"]["stylerig-lite"] == "stylerig_lite.cli:main"
    from stylerig_lite import cli

    assert callable(cli.main)
    owner, name, _ = repository()
    assert project["urls"]["Homepage"] == f"https://github.com/{owner}/{name}", (
        "pyproject.toml [project.urls] Homepage must match repository.url in _config.yml"
    )


def test_ci_lock_satisfies_every_requirement() -> None:
    from packaging.requirements import Requirement

    project = load_pyproject()["project"]
    pins = load_lock()
    assert _normalize(project["name"]) not in pins, "the lock must not pin the project itself"
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    # CI's platform: the lock is for CPython 3.11 on Linux x86_64.
    ci_environment = {"platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux",
                      "python_version": "3.11", "python_full_version": "3.11.0", "extra": ""}
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(ci_environment):
            continue
        pinned = pins.get(_normalize(requirement.name))
        if pinned is None:
            problems.append(f"{text}: not in the lock")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{text}: the lock pins {pinned}")
    assert not problems, "requirements/ci.txt does not satisfy pyproject.toml:\n" + "\n".join(problems)
    # The pytorch3d wheel works only with these torch releases (measured; see the lock's header).
    assert pins["torch"].split("+")[0] in {"2.11.0", "2.12.1"}, f"torch {pins['torch']} breaks easypytorch3d"


# ------------------------------------------------------------------------------- links, licences, assets


def test_readme_links_name_the_configured_repository() -> None:
    owner, name, branch = repository()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    badges = re.findall(r"https://colab\.research\.google\.com/github/([^/\s)]+)/([^/\s)]+)/blob/([^/\s)]+)/"
                        r"notebooks/([^\s)]+\.ipynb)", readme)
    wrong = [b for b in badges if b[:3] != (owner, name, branch)]
    assert not wrong, f"README Colab links must point at {owner}/{name} branch {branch}: {wrong}"
    linked = {b[3] for b in badges}
    unlinked = [p.name for p in BOOK_NOTEBOOKS if p.name not in linked]
    assert not unlinked, f"README has no Colab badge for {unlinked}"
    assert f"https://{owner}.github.io/{name}/" in readme, "README must link the GitHub Pages book"
    binder = re.findall(r"https://mybinder\.org/v2/gh/([^/\s)]+)/([^/\s)]+)/([^?\s)]+)\?urlpath=lab/tree/([^\s)]+)", readme)
    assert binder, "README must have a Binder badge (https://mybinder.org/v2/gh/OWNER/REPO/BRANCH?urlpath=lab/tree/...)"
    for found in binder:
        assert found[:3] == (owner, name, branch), f"README Binder link must point at {owner}/{name} {branch}: {found}"
        assert (REPO / found[3]).is_file(), f"README Binder link opens {found[3]}, which does not exist"
    ci_badges = re.findall(rf"https://github\.com/{re.escape(owner)}/{re.escape(name)}/actions/workflows/([\w.-]+)/badge\.svg",
                           readme)
    assert ci_badges, f"README must show a CI status badge (https://github.com/{owner}/{name}/actions/workflows/ci.yml/badge.svg)"
    for workflow in ci_badges:
        assert (REPO / ".github" / "workflows" / workflow).is_file(), f"README badge names a missing workflow {workflow}"


def test_readme_first_screen() -> None:
    """Before the first `## ` section: the badges, a picture, and the two commands."""
    owner, name, branch = repository()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first = re.split(r"^## ", readme, maxsplit=1, flags=re.M)[0]
    wanted = {
        "Colab badge for chapter 1": f"https://colab.research.google.com/github/{owner}/{name}/blob/{branch}/notebooks/01_",
        "Binder badge": f"https://mybinder.org/v2/gh/{owner}/{name}/{branch}",
        "link to the book on GitHub Pages": f"https://{owner}.github.io/{name}/",
        "CI status badge": f"https://github.com/{owner}/{name}/actions/workflows/",
        "`make book`": "make book",
        "`make test`": "make test",
    }
    missing = [what for what, text in wanted.items() if text not in first]
    assert not missing, f"README's first screen (before the first `## ` heading) lacks: {missing}"
    images = re.findall(r"!\[[^\]]+\]\(([^)\s]+\.(?:png|jpg|jpeg|gif|svg|webp))\)", first)
    local = [image for image in images if not image.startswith("http")]
    assert local, "README's first screen must show a picture (a committed image with alt text)"
    for image in local:
        assert (REPO / image).is_file(), f"README shows {image}, which does not exist"


def test_licences() -> None:
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "StyleRig Lite authors" in licence
    credits = (REPO / "book" / "credits.md").read_text(encoding="utf-8")
    # The MIT licence of ICT-FaceKit requires its copyright and permission notice with the work.
    for required in ("ICT-FaceKit", "Copyright (c) 2020 USC Institute for Creative Technologies",
                     "Permission is hereby granted, free of charge"):
        assert required in credits, f"book/credits.md must contain {required!r}"


def test_no_third_party_meshes_in_repository() -> None:
    meshes = []
    for folder, subfolders, files in os.walk(REPO):
        # Skip hidden folders (.git, .venv) and build output; everything else may be committed.
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d != "_build"]
        meshes += [os.path.join(folder, f) for f in files if f.endswith((".obj", ".obj.gz"))]
    assert not meshes, f"ICT-FaceKit meshes are fetched, never committed; remove {meshes}"


def test_ci_entry_point_is_executable() -> None:
    assert os.access(REPO / ".ci" / "run", os.X_OK), ".ci/run must be executable (chmod +x .ci/run)"
