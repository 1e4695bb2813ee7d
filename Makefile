# The README's commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; override for a GPU, e.g. `make install TORCH="torch --index-url ..."`.
TORCH ?= torch==2.13.0

.PHONY: install test test-slow test-all lint demo bench bench-sd bench-sdxl bench-levers fuzz gpu-check gpu-check-sdxl \
	toy-model interop readers clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test,plot,tensorboard]"
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

# Every reader of files from elsewhere, fuzzed with Hypothesis: FUZZ_EXAMPLES inputs per target, each in a fresh
# worker whose peak memory is measured (tests/test_fuzz.py runs the same targets with small budgets in `make test`).
FUZZ_EXAMPLES ?= 2000
fuzz: install
	$(BIN)/python bench/fuzz.py --examples $(FUZZ_EXAMPLES)

# The example script for the comparisons comes from a git clone of huggingface/diffusers (DIFFUSERS_REPO=...).
DIFFUSERS_REPO ?=
EXAMPLE := $(if $(DIFFUSERS_REPO),--diffusers-repo $(DIFFUSERS_REPO))

bench: install
	$(BIN)/python bench/train_speed.py $(EXAMPLE)
	$(BIN)/python bench/learning.py
	$(BIN)/python bench/generate_speed.py
	$(BIN)/python bench/startup.py

# SD-scale training on random weights (hours on 2 CPU cores; builds 4-5 GB models in /tmp on first use)
bench-sd: install
	$(BIN)/python bench/train_speed.py --shape sd15 --resolution 512 --steps 4 --warmup 1 --rounds 2 \
		--programs textinv,diffusers,textinv-gc,textinv-budget --max-memory 2.5 $(EXAMPLE)
	$(BIN)/python bench/train_speed.py --shape sd15 --resolution 256 --steps 6 --warmup 2 --rounds 3 $(EXAMPLE)
	$(BIN)/python bench/train_speed.py --shape sd2 --resolution 768 --steps 3 --warmup 1 --rounds 1 $(EXAMPLE)
	$(BIN)/python bench/latent_cache.py

# Identity against editability, lever by lever, on the toy model (hours on 2 shared CPU cores; resumable): the
# README's lever table and docs/levers.png
bench-levers: install
	$(BIN)/python bench/levers.py choose --out bench-levers
	$(BIN)/python bench/levers.py check --out bench-levers
	$(BIN)/python bench/levers.py report --out bench-levers --plot docs/levers.png

# SDXL's shape on random weights (13 GB of float32 weights: builds in about 11 GB of memory and 6 minutes on first
# use); the example cannot run at 1024 px in float32 on a 24 GiB machine (README "At SDXL's size")
bench-sdxl: install
	$(BIN)/python bench/train_speed.py --shape sdxl --resolution 256 --steps 4 --warmup 1 --rounds 2 \
		--programs textinv,diffusers,textinv-budget --max-memory 7.5 $(EXAMPLE)
	$(BIN)/python bench/train_speed.py --shape sdxl --resolution 1024 --steps 2 --warmup 0 --rounds 1 \
		--programs textinv-budget --max-memory 8 $(EXAMPLE)

gpu-check: install
	DIFFUSERS_REPO=$(DIFFUSERS_REPO) PYTHON=$(BIN)/python bench/gpu_check.sh

gpu-check-sdxl: install
	SHAPE=sdxl DIFFUSERS_REPO=$(DIFFUSERS_REPO) PYTHON=$(BIN)/python bench/gpu_check.sh

toy-model: install
	$(BIN)/python -m textinv.toy.build
	$(BIN)/python -m textinv.toy.evaluate

# InvokeAI's own probe and loader on the files textinv writes, in a venv of its own (invokeai pins its own
# diffusers/transformers and needs Python 3.11 or 3.12). Heavy, so not part of `make test`.
INTEROP_VENV ?= .venv-interop
interop: $(INTEROP_VENV)/.installed
	TQDM_DISABLE=1 PYTHONPATH=$(CURDIR) $(INTEROP_VENV)/bin/python interop/invokeai_check.py

# PyPI's torchvision is built against PyPI's CUDA torch and does not load with the CPU torch; the embedding probe
# and loader do not use it, and transformers skips it when it is absent.
$(INTEROP_VENV)/.installed:
	$(PYTHON) -m venv $(INTEROP_VENV)
	$(INTEROP_VENV)/bin/pip install -q --upgrade pip
	$(INTEROP_VENV)/bin/pip install -q $(TORCH) invokeai typer rich pyyaml
	$(INTEROP_VENV)/bin/pip uninstall -q -y torchvision
	touch $@

# sd-prompt-reader, a PNG metadata reader from PyPI, pins pillow 10.3 and a Tk GUI toolkit, so it gets a venv of its
# own; tests/test_png_metadata.py reads textinv's PNGs with it when this venv exists (about 40 MB).
READERS_VENV ?= .venv-readers
readers: $(READERS_VENV)/.installed

$(READERS_VENV)/.installed:
	$(PYTHON) -m venv $(READERS_VENV)
	$(READERS_VENV)/bin/pip install -q sd-prompt-reader==1.3.5
	touch $@

clean:
	rm -rf $(VENV) $(INTEROP_VENV) $(READERS_VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
