# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment in .venv/ on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 first: it is the CPU build (a plain `torch` would pull CUDA wheels)
TORCH ?= torch==2.13.0

.PHONY: demo test venv browser clean bench

$(BIN)/segqc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test,ray]"
	touch $@

venv: $(BIN)/segqc

demo: venv
	$(BIN)/segqc demo --out runs/demo

# the report test opens the HTML report in headless chromium: installed here when missing
browser:
	bash tools/ensure_browser.sh

test: venv browser
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs
