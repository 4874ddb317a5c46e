# Veil's two commands: `make run` and `make test`. Each sets up whatever is missing first (the Python
# environment with libtorch, the face-detector weights) and redoes nothing that is done.

SHELL := /bin/bash
# The system's python3, found before the venv goes first on PATH below.
SYSTEM_PYTHON := $(shell command -v python3)
VENV := $(CURDIR)/.venv
FACENET_WHEEL := .cache/wheels/facenet_pytorch-2.6.0-py3-none-any.whl
MTCNN := models/mtcnn/pnet.safetensors models/mtcnn/rnet.safetensors models/mtcnn/onet.safetensors

# torch-sys takes libtorch from the venv's PyTorch (nothing is downloaded at build time).
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)

.PHONY: all setup fixtures build run test lint clean
all: build

setup: $(VENV)/.veil-installed $(MTCNN)

$(VENV)/.veil-installed: requirements.txt scripts/check-prereqs
	@scripts/check-prereqs
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -r requirements.txt
	touch $@

$(FACENET_WHEEL): | $(VENV)/.veil-installed
	$(VENV)/bin/pip download --disable-pip-version-check --no-deps --dest .cache/wheels facenet-pytorch==2.6.0

$(MTCNN) &: $(FACENET_WHEEL) models/convert_mtcnn.py $(VENV)/.veil-installed
	$(VENV)/bin/python models/convert_mtcnn.py $(FACENET_WHEEL) models/mtcnn

# Tiny generator-zoo fixtures for the tests: every architecture, trained for seconds on the CPU
# (models/train/train.py --tiny), with their manifest. Needs ../shared/data/celeba.
FIXTURES := target/fixtures/models
TRAIN_SCRIPTS := $(wildcard models/train/*.py)
# The face detector is copied in, so the folder is a complete models folder for `veil` and `veild`.
$(FIXTURES)/manifest.toml: $(TRAIN_SCRIPTS) $(MTCNN) | $(VENV)/.veil-installed
	$(VENV)/bin/python models/train/train.py all --tiny --data ../shared/data/celeba --out $(FIXTURES)
	mkdir -p $(FIXTURES)/mtcnn && cp $(MTCNN) $(FIXTURES)/mtcnn/

fixtures: $(FIXTURES)/manifest.toml

# Optional cargo features, e.g. `make build FEATURES=heic` (needs libheif-dev).
CARGO_FEATURES := $(if $(FEATURES),--features $(FEATURES))

build: setup
	cargo build --release $(CARGO_FEATURES)

# Runs veild in the foreground on the embedded defaults (or ~/.config/veil/veil.toml); Ctrl-C stops it.
run: build
	./target/release/veild $(ARGS)

test: setup fixtures
	cargo test --release $(CARGO_FEATURES)

lint: setup
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings

clean:
	cargo clean
	rm -rf $(VENV) .cache models/mtcnn
