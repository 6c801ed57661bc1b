# StyleRig Lite: `make test`, `make book`, `make lab`, `make bench`.
#
# Every target first sets up its virtual environment from the pinned lock
# (requirements/ci.txt, a Python 3.11 lock) plus the package in editable mode. The env
# is reused while the lock and pyproject.toml are unchanged: the stamp file's name
# carries their hash, so a changed lock reinstalls and an unchanged one costs nothing.
#
#   make test                  unit tests (tests/), then every notebook with nbval
#   make book                  execute the notebooks (papermill, quick mode) and build _build/html
#   make book QUICK=0          the same with the full-length chapters
#   make lab                   JupyterLab, opened on notebooks/
#   make VENV=/path/to/venv …  use (and, if needed, create) another environment

VENV ?= .venv
PYTHON ?= python3
# 1: chapters run their small "quick" configuration (CI, book builds); 0: full length.
QUICK ?= 1
# Generous per-test / per-cell limits: a hang should fail, a slow CPU should not.
TEST_TIMEOUT ?= 900
CELL_TIMEOUT ?= 1800
# `make book` in quick mode: no cell takes minutes, so a hung kernel is cut off sooner.
BOOK_CELL_TIMEOUT ?= $(if $(filter 1,$(QUICK)),600,$(CELL_TIMEOUT))
PYTEST_ARGS ?=
LAB_ARGS ?=

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

VPY := $(VENV)/bin/python
# ENV_HASH keys the environment (CI keeps one venv per lock, outside the clone). The stamp
# also carries this clone's path: a venv shared by several clones must have its editable
# install pointed at the clone being tested, so switching clones re-runs the (cheap) install.
HASHES := $(shell cat requirements/ci.txt requirements/nodeps.txt pyproject.toml | $(PYTHON) -c 'import hashlib, sys; \
  env = hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16]; \
  print(env, hashlib.sha256((env + sys.argv[1]).encode()).hexdigest()[:16])' "$(CURDIR)")
ENV_HASH := $(word 1,$(HASHES))
STAMP := $(VENV)/.installed-$(word 2,$(HASHES))

# Notebooks whose name starts with "_" are scratch/templates: neither tested nor in the book.
NOTEBOOKS := $(sort $(filter-out notebooks/_%,$(wildcard notebooks/*.ipynb)))
EXECUTED := $(patsubst notebooks/%,_build/executed/notebooks/%,$(NOTEBOOKS))
# A change anywhere in the package re-executes the notebooks that `make book` renders.
PACKAGE_FILES := $(shell find stylerig_lite -type f ! -path '*/__pycache__/*' ! -name '*.pyc' 2>/dev/null)
BOOK_SRC := _build/book-src
QUICK_BOOL := $(if $(filter 1,$(QUICK)),True,False)

# Third-party assets (ICT-FaceKit) are never committed; every machine has them in
# ../shared/assets. An already exported STYLERIG_LITE_ASSET_MIRROR wins.
ifeq ($(origin STYLERIG_LITE_ASSET_MIRROR),undefined)
ifneq ($(wildcard ../shared/assets),)
export STYLERIG_LITE_ASSET_MIRROR := $(abspath ../shared/assets)
endif
endif

test book: export STYLERIG_LITE_QUICK := $(QUICK)
# Kernels start in notebooks/, where `import stylerig_lite` would fall back to whatever
# clone the venv's editable install points at; put this clone first.
test book: export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: help venv env-hash test book lab bench browser-deps clean distclean

help:
	@echo "make test          unit tests, then the notebooks with nbval (quick mode)"
	@echo "make book          execute the notebooks with papermill, build the HTML book in _build/html, check its links"
	@echo "make lab           JupyterLab on notebooks/"
	@echo "make bench         python -m stylerig_lite.bench"
	@echo "make venv          only set up $(VENV) from requirements/ci.txt"
	@echo "make browser-deps  install Debian's chromium for the browser tests (root, apt)"
	@echo "make clean         remove _build and caches (make distclean also removes $(VENV))"

venv: $(STAMP)

env-hash:
	@echo $(ENV_HASH)

# No prerequisites on purpose: the stamp's name is a content hash of the lock and
# pyproject.toml (plus the clone's path), so timestamps never force a reinstall.
$(STAMP):
	@if [ ! -x $(VPY) ]; then echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	@$(VPY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "error: requirements/ci.txt is a Python 3.11 lock but $(VPY) is Python $$($(VPY) -V)."; \
	  echo "       Remove $(VENV) and run again with PYTHON=python3.11 (or use environment.yml)."; exit 1; }
	$(VPY) -m pip install -r requirements/ci.txt
	$(VPY) -m pip install --no-deps -e .
	@# pip check, except the declared requirements of the --no-deps packages (requirements/nodeps.txt),
	@# which are known to be unmet on purpose (a venv set up before may already hold them).
	@out=$$($(VPY) -m pip check 2>&1) || { bad=$$(echo "$$out" | grep -v -E '^(mediapipe|random-face) [0-9]' || true); \
	  if [ -n "$$bad" ]; then echo "$$bad"; exit 1; fi; }; echo "pip check: clean (requirements/nodeps.txt aside)"
	$(VPY) -m pip install --no-deps -r requirements/nodeps.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

# Both suites always run; the target fails if either fails. pytest exits 5 when it
# collected nothing, which counts as a failure for tests/ (an empty suite proves nothing).
test: $(STAMP)
	@status=0; \
	echo "== tests/ =="; \
	$(VPY) -m pytest tests --timeout=$(TEST_TIMEOUT) $(PYTEST_ARGS) || { rc=$$?; status=1; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests in tests/"; fi; }; \
	if [ -n "$(NOTEBOOKS)" ]; then \
	  echo "== notebooks (nbval): $(NOTEBOOKS) =="; \
	  $(VPY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
	    --nbval-cell-timeout=$(CELL_TIMEOUT) --timeout=$(CELL_TIMEOUT) $(PYTEST_ARGS) $(NOTEBOOKS) || { rc=$$?; status=1; \
	    if [ $$rc -eq 5 ]; then echo "error: nbval collected no cells from $(NOTEBOOKS)"; fi; }; \
	else \
	  echo "== notebooks: none in notebooks/ yet, so nbval has nothing to run (tests/ decided the result) =="; \
	fi; \
	if [ $$status -ne 0 ]; then echo "make test: FAILED"; else echo "make test: passed"; fi; \
	exit $$status

# Executed copies go to _build/, never over the sources. The kernel's working
# directory is notebooks/, as in JupyterLab and nbval, so relative paths agree.
# A kernel that stops answering mid-cell (seen once here with ipykernel 7 on a loaded machine: the
# cell never starts, both sides wait) times the cell out after BOOK_CELL_TIMEOUT; the notebook
# then runs once more from the start. A notebook that fails twice fails the target.
_build/executed/notebooks/%.ipynb: notebooks/%.ipynb $(STAMP) $(PACKAGE_FILES)
	@mkdir -p $(@D)
	@start=$$SECONDS; \
	for attempt in 1 2; do \
	  if $(VENV)/bin/papermill $< $@ -p quick $(QUICK_BOOL) --cwd notebooks --no-progress-bar \
	    --execution-timeout $(BOOK_CELL_TIMEOUT); then break; fi; \
	  if [ $$attempt -eq 2 ]; then echo "error: $< failed twice"; exit 1; fi; \
	  echo "papermill failed on $<: running it once more"; \
	done; \
	$(VPY) tests/hide_injected.py $@; \
	echo "executed $< in $$((SECONDS - start)) s"

# Jupyter Book does not execute anything (execute_notebooks: off in _config.yml): it
# renders a staging copy of the book sources in which the notebooks are the executed
# copies. The staging tree mirrors the repository layout, so page paths (and the Colab
# and repository links built from them) are the same as in the repository.
# Then tests/htmlcheck.py checks the HTML offline: a broken internal link, a missing
# image or an unresolved citation fails the target (and the Pages workflow).
book: $(EXECUTED) $(STAMP)
	rm -rf $(BOOK_SRC)
	mkdir -p $(BOOK_SRC)
	cp -R _config.yml _toc.yml book notebooks $(BOOK_SRC)/
	$(if $(EXECUTED),cp $(EXECUTED) $(BOOK_SRC)/notebooks/)
	$(VENV)/bin/jupyter-book build $(BOOK_SRC) --path-output . --builder html -W -n --keep-going
	$(VPY) tests/htmlcheck.py _build/html
	@echo "book: open $(CURDIR)/_build/html/index.html"

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) --ServerApp.default_url=/lab/tree/notebooks $(LAB_ARGS)

bench: $(STAMP)
	$(VPY) -m stylerig_lite.bench

# The browser tests drive Debian's chromium (never `playwright install`, which
# downloads a browser). Installs it only when missing, and only as root with apt.
browser-deps:
	@if [ -x /usr/bin/chromium ]; then \
	  echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null || echo present)"; \
	elif [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	else \
	  echo "error: /usr/bin/chromium is missing; install Debian's chromium as root (apt-get install chromium)"; \
	  exit 1; \
	fi

clean:
	rm -rf _build .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
