# The README's two commands: `make demo` and `make test`. Both set up .venv on first use, from the lock.
# `make test-fast` is the edit-test loop: the import layers and every test not marked slow.
# `make test-latest` meets the newest releases on purpose; `make lock` then moves the lock to them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch (the newest one this machine's registry has): with it installed, the `torch>=`
# requirement is satisfied and no CUDA wheels are pulled.
TORCH  ?= torch==2.13.0
# Every version, direct and transitive, that the suite last passed with (Python 3.11, Linux x86_64). Users
# installing ftsweep get pyproject.toml's ranges; `make test` and CI install exactly these.
LOCK   := constraints.txt
# A stamp file, so the venv is rebuilt when pyproject.toml or the lock changes and not otherwise.
STAMP  := $(VENV)/.installed
LATEST := .venv-latest

.PHONY: demo test test-fast test-latest lock lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(LOCK) pip setuptools
	$(BIN)/python -m pip install -q "$(TORCH)"
	# -qq: errors only; -q would print setuptools' note on every editable install of a flat layout.
	$(BIN)/python -m pip install -qq -c $(LOCK) --build-constraint $(LOCK) -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/ftsweep launch demo

# The import layers (pyproject.toml [tool.importlinter]): each layer imports only from those below it.
lint: $(STAMP)
	$(BIN)/lint-imports

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# A new venv with the newest release of every dependency pyproject.toml admits (no lock; torch: TORCH), then
# the layers and the fast tier. Run it before moving the lock, and whenever upstream may have moved (weekly, or
# before a release); what it breaks is fixed in the code, and `make lock` records the versions it passed with.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip setuptools
	$(LATEST)/bin/python -m pip install -q "$(TORCH)"
	# TORCH again, or the eager upgrade would take the newest torch: on PyPI a CUDA build (GBs of nvidia wheels).
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]" "$(TORCH)"
	$(LATEST)/bin/lint-imports
	HF_HUB_OFFLINE=1 $(LATEST)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider
	# Written once the tests passed: `make lock` has nothing to take from a failed run.
	$(LATEST)/bin/python -m pip freeze --all --exclude-editable > $(LATEST)/versions.txt

# The lock from the venv `make test-latest` built and passed: every installed version, pinned.
# Local version labels (torch's +cpu) are dropped: `torch==2.13.0` admits the CPU build that TORCH installs.
lock: $(LATEST)/versions.txt
	{ echo "# The versions \`make test\` and CI install (pip constraints), from \`make test-latest && make lock\`"; \
	  echo "# on $$(date -u +%F) with $$($(LATEST)/bin/python -V) on $$(uname -sm). Users get pyproject.toml's ranges."; \
	  sed -E 's/\+[A-Za-z0-9.]+$$//' $(LATEST)/versions.txt; } > $(LOCK)

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
