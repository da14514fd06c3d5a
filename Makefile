# Two entry points for a fresh machine: `make demo` and `make test`. Both install what they need into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: install demo test lint format bench clean

install: $(VENV)/.installed

# PYTHONWARNINGS hides setuptools' "Editable installation" notice alone (a box of stars on every install saying that
# the package is found through the working folder, which is what an editable install is for).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# Zero-shot on both toy benchmarks, then CoOp on the base classes of `caltech101` (base accuracy rises, novel falls)
# and MergeTune continued from it with MergeTune's recipe, its lr scaled for tiny as CoOp's (novel comes back):
# zero-shot, CoOp and CoOp + MergeTune side by side.
demo: install
	$(BIN)/cftool eval --zs tiny --benchmark mtil-tiny
	$(BIN)/cftool eval --zs tiny --benchmark base2new-tiny
	$(BIN)/cftool finetune --zs tiny --data toy:caltech101 --classes base --shots 16 --method coop --epochs 50 \
		--lr 0.05 --no-prototypes --force -o $(DEMO_OUT)/coop-caltech101-base.safetensors
	$(BIN)/cftool continue $(DEMO_OUT)/coop-caltech101-base.safetensors --zs tiny --lr 0.05 --no-prototypes --force
	$(BIN)/cftool eval zs $(DEMO_OUT)/coop-caltech101-base.safetensors $(DEMO_OUT)/coop-caltech101-base.mergetune.safetensors \
		--data toy:caltech101 --classes base,novel
	@echo "Takeaway: CoOp trades novel classes for base ones (its HM falls below zero-shot's); MergeTune's continuation" \
		"brings most of the novel classes back and keeps most of the base gain, with one model and no zero-shot model at inference."

# The linter and the formatter first (seconds), then the tests in parallel on up to four workers, each file's tests on
# one worker (module fixtures are built once) except the example scripts, each its own (tests/conftest.py).
test: lint
	$(BIN)/python -m pytest -q --numprocesses=auto --maxprocesses=4 --dist=loadgroup

lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

# Rewrites the files ruff's formatter would change.
format: install
	$(BIN)/python -m ruff format .

# Peak memory and time of `unify` on eleven ViT-B/16-sized deltas, streaming versus fully loaded (6.6 GB of scratch
# disk; results in benchmarks/RESULTS.md).
bench: install
	$(BIN)/python benchmarks/unify_memory.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .hypothesis
