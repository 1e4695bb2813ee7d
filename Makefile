# The README's commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; override for a GPU, e.g. `make install TORCH="torch --index-url ..."`.
TORCH ?= torch==2.13.0

.PHONY: install test test-slow test-all lint demo bench toy-model clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test,plot]"
	touch $@

test: install
	$(BIN)/pytest -q

test-slow: install
	$(BIN)/pytest -q -m slow; rc=$$?; [ $$rc -eq 5 ] && echo 'no slow tests selected' || exit $$rc

test-all: test test-slow

lint: install
	$(BIN)/ruff check textinv tests bench

demo: install
	$(BIN)/textinv demo

bench: install
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/learning.py
	$(BIN)/python bench/generate_speed.py

toy-model: install
	$(BIN)/python -m textinv.toy.build
	$(BIN)/python -m textinv.toy.evaluate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
