"""The package's fence: no import cycles, a public surface per module, no private imports.

Read from the source (``ast``), so function-level imports count too: a cycle hidden
inside a function is still a cycle between two modules.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

import stylerig_lite

PACKAGE = Path(stylerig_lite.__file__).parent


def _modules() -> Dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> List[Tuple[str, str, int]]:
    """``(target module, imported name or "", line)`` for every import of the package in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "stylerig_lite":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in MODULES:  # `from . import pretrained`
                    found.append((submodule, "", node.lineno))
                else:
                    found.append((target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "stylerig_lite":
                    found.append((alias.name, "", node.lineno))
    return found


def _graph() -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, _, _ in _imports(name, path):
            # A package's __init__ importing its own submodules is how re-exports work, not a cycle.
            if target in MODULES and target != name and not target.startswith(name + "."):
                # Importing a submodule also runs its parent package's __init__.
                graph[name].add(target)
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package():
    cycles = _cycles(_graph())
    assert not cycles, (f"import cycles in stylerig_lite (function-level imports count): {cycles}; move the shared "
                        "piece down a floor (see the package docstring) instead of importing upward")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_declares_its_public_names(name):
    module = importlib.import_module(name)
    assert isinstance(getattr(module, "__all__", None), (list, tuple)), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module does not define: {missing}"
    assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ lists a name twice"


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for name, path in MODULES.items():
        for target, imported, line in _imports(name, path):
            if imported.startswith("_") and not imported.startswith("__") and target != name:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}.{imported}")
    assert not offenders, "private names imported across modules (make them public or move them):\n" + "\n".join(offenders)


def test_the_package_docstring_maps_every_module_to_a_floor():
    doc = stylerig_lite.__doc__ or ""
    top = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    unmapped = sorted(m for m in top if f"``{m}``" not in doc)
    assert not unmapped, f"stylerig_lite's docstring does not list {unmapped}"
    for floor in ("base", "3DMM", "networks", "data", "training", "evaluation", "app", "tools"):
        assert floor in doc, f"the package docstring has no {floor!r} floor"


def test_a_module_never_imports_a_higher_floor():
    """The floors of the package docstring, read from it: a module imports only its own floor and those below."""
    floors = _floors_from_docstring()
    offenders = []
    for name, path in MODULES.items():
        mine = floors.get(name.split(".")[1] if "." in name else "")
        if mine is None:
            continue
        for target, _, line in _imports(name, path):
            theirs = floors.get(target.split(".")[1] if "." in target else "")
            if theirs is not None and theirs > mine:
                offenders.append(f"{name} (floor {mine}) imports {target} (floor {theirs}) at line {line}")
    assert not offenders, "\n".join(offenders)


def _floors_from_docstring() -> Dict[str, int]:
    """Module -> floor number, from the docstring's ``Floor N, name:`` headings and the ``module`` lines below them."""
    floors: Dict[str, int] = {}
    current = None
    for line in (stylerig_lite.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped.startswith("Floor ") and ":" in stripped:
            current = int(stripped.split()[1].rstrip(",:"))
        elif current is not None and stripped.startswith("- ``"):
            floors[stripped[4:].split("``")[0]] = current
    return floors


def test_the_floor_reader_reads_the_docstring():
    floors = _floors_from_docstring()
    assert floors["checks"] == 0 and floors["io_utils"] == 0
    assert floors["cli"] == max(floors.values())


NOTEBOOKS = {"1": "01_3dmm_basics", "2": "02_corpus_generation", "3": "03_differentiable_rendering",
             "4": "04_face_reconstruction", "5": "05_rignet_training", "6": "06_interactive_editing",
             "7": "07_editing_a_photograph", "A": "A_faceworld"}


def _chapters_from_docstring() -> Dict[str, List[str]]:
    """Chapter -> modules, from the ``(ch. 1, 3)`` / ``(appendix A)`` notes of the package docstring."""
    import re

    chapters: Dict[str, List[str]] = {}
    for line in (stylerig_lite.__doc__ or "").splitlines():
        match = re.match(r"\s+- ``(\w+)``\s+.*\((.*)\)\s*$", line)
        if not match:
            continue
        module, refs = match.groups()
        for part in (p.strip() for p in refs.split(",")):
            part = part[4:] if part.startswith("ch. ") else part
            numbers = re.fullmatch(r"(\d)(?:-(\d))?", part)
            if numbers:
                low = int(numbers.group(1))
                for chapter in range(low, int(numbers.group(2) or low) + 1):
                    chapters.setdefault(str(chapter), []).append(module)
            elif part == "appendix A":
                chapters.setdefault("A", []).append(module)
    return chapters


def test_modules_and_chapters_point_at_each_other():
    """d2l's back-pointers both ways: the docstring names a module's chapters, the chapter names its modules."""
    import json

    chapters = _chapters_from_docstring()
    assert set(chapters) == set(NOTEBOOKS)
    root = PACKAGE.parent / "notebooks"
    for chapter, modules in chapters.items():
        cell = json.loads((root / f"{NOTEBOOKS[chapter]}.ipynb").read_text(encoding="utf-8"))["cells"][0]
        intro = "".join(cell["source"])
        assert "Where the code lives" in intro, chapter
        missing = [m for m in modules if f"`{m}`" not in intro]
        assert not missing, f"chapter {chapter}'s introduction does not name {missing}"


def test_the_readme_map_names_every_module_on_its_floor():
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    names = {0: "base", 1: "3DMM", 2: "networks", 3: "data", 4: "evaluation", 5: "training", 6: "app", 7: "tools"}
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    for module, floor in _floors_from_docstring().items():
        assert f"`{module}" in rows.get(names[floor], ""), f"README's 'Where things live' lacks {module} on {names[floor]}"
