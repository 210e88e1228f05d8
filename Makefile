# The README's two commands: `make demo` and `make test`. Both set up .venv on first use.
# `make test-fast` is the edit-test loop: the import layers and every test not marked slow.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# A stamp file, so the venv is rebuilt when pyproject.toml changes and not otherwise.
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first: with it installed, the `torch>=` requirement is satisfied and no CUDA wheels are pulled.
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
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

clean:
	rm -rf $(VENV) runs .pytest_cache
