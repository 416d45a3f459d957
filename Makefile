# Two commands do all the set-up on a fresh machine:
#   make demo   build, install into .venv, run the word count example end to end
#   make test   build, install into .venv, run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard wallaroo/_core/*.pyx wallaroo/_core/*.pxd)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest -q --doctest-modules wallaroo benchmarks tests

# make bench: the compare runner (every workload and mode beside its plain loop, latency at
# 10/50/90 % of peak, state per key), then the asv suite once against this install, published as
# HTML that loads nothing from the network. BENCH_ARGS go to the runner, e.g.
#   make bench BENCH_ARGS="--rounds 5 word_count keyed_sum"
BENCH_ARGS ?= --latency
bench: install
	$(BIN)/python -m benchmarks.compare --json .asv/compare.json $(BENCH_ARGS)
	$(BIN)/asv machine --yes >/dev/null
	$(BIN)/asv run --python=same --quick --show-stderr --set-commit-hash $$(git rev-parse HEAD)
	$(BIN)/asv publish
	dpkg -s $$($(BIN)/python -m benchmarks.offline_html --packages) >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq $$($(BIN)/python -m benchmarks.offline_html --packages); }
	$(BIN)/python -m benchmarks.offline_html
	@echo "asv report: .asv/html/index.html (all assets local). Serve it, then open the URL:"
	@echo "  $(BIN)/asv preview                                   # http://127.0.0.1:8080"
	@echo "  $(BIN)/python -m http.server --bind 127.0.0.1 -d .asv/html 8080"
	@echo "runner figures: .asv/compare.json"

clean:
	rm -rf build $(VENV) *.egg-info wallaroo/_core/*.c wallaroo/_core/*.so
