# The two commands of the README: `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3
# Debian packages the tests need, by what needs them.
NATIVE_DEBS  := gcc libc6-dev
SANDBOX_DEBS := runc runsc
WASM_DEBS    := clang lld wasi-libc libclang-rt-14-dev-wasm32
OCI_DEBS     := umoci skopeo docker-registry runc
UI_DEBS      := chromium chromium-driver
TEST_DEBS    := $(NATIVE_DEBS) $(SANDBOX_DEBS) $(WASM_DEBS) $(OCI_DEBS) $(UI_DEBS)

.PHONY: run test bench schemas system-deps clean examples docs docs-serve

$(PY):
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || $(MAKE) --no-print-directory system-deps DEBS=python3-venv
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	@# quickjs-ng installs the `quickjs` module of the archived `quickjs` package: remove both, then install.
	@if $(PY) -m pip show quickjs >/dev/null 2>&1; then $(PY) -m pip uninstall --quiet --yes quickjs quickjs-ng; fi
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs the Debian packages in DEBS that are missing (as root; otherwise says what to install).
system-deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "missing Debian packages:$$missing (install them, or run as root)"; exit 1; fi; \
	fi

run: $(STAMP)
	$(VENV)/bin/nex node up $(ARGS)

# On 2 pytest-xdist workers: half of the suite's time is spent waiting on the processes it starts.
# Set here rather than in pytest's addopts, so that a bare `pytest tests/FILE.py` (one test, -s, pdb)
# stays serial; PYTEST_ARGS="-n 0" runs the whole suite serially (a later -n wins).
test: $(STAMP)
	@$(MAKE) --no-print-directory system-deps DEBS="$(TEST_DEBS)"
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

# The programs of the README's quick start, in examples/quickstart: a Wasm function and two static executables.
examples:
	@$(MAKE) --no-print-directory system-deps DEBS="$(NATIVE_DEBS) $(WASM_DEBS)"
	$(MAKE) --no-print-directory -C examples/quickstart

schemas: $(STAMP)
	$(PY) -m nex.api.schema docs/schemas

# The documentation site (mkdocs.yml), strict: a broken link or a page missing from the nav fails it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	@echo "the site is in site/: open site/index.html, or serve it with make docs-serve"

# The same site on http://127.0.0.1:8000/, rebuilt as the docs change (DOCS_ADDR=host:port to move it).
DOCS_ADDR ?= 127.0.0.1:8000
docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict --dev-addr $(DOCS_ADDR)

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build site src/*.egg-info
