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
	$(BIN)/python -m pytest -q --doctest-modules wallaroo tests

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf build $(VENV) *.egg-info wallaroo/_core/*.c wallaroo/_core/*.so
