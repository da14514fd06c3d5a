# Two entry points for a fresh machine: `make demo` and `make test`. Both install what they need into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: install demo test completions clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/cftool eval --zs tiny --benchmark mtil-tiny
	$(BIN)/cftool eval --zs tiny --benchmark base2new-tiny

test: install
	$(BIN)/python -m pytest -q

completions: install
	$(BIN)/python -m cftool.cli.completions completions

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .hypothesis
