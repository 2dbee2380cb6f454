# hvd_stgnn. `make run` and `make test` set everything up first (tools/setup.sh is idempotent).
SHELL   := /bin/bash
VENV    ?= .venv
NP      ?= 2
EPOCHS  ?= 10
DATA    ?= data/tiny.h5
RUN_DIR ?= runs/default
PYTEST_ARGS ?=

.PHONY: setup run test test-fast clean

setup:
	bash tools/setup.sh

# The embedded default data: the synthetic `tiny` preset (deterministic, about a second to write).
# A fresh run directory each time (config.toml, metrics.jsonl, results.json, checkpoints/, curves.png).
run: setup
	$(VENV)/bin/hvd-stgnn data synth --preset tiny --seed 0 --out $(DATA)
	rm -rf $(RUN_DIR)
	jobs/local.sh -np $(NP) hvd-stgnn train --data $(DATA) --model tgcn --epochs $(EPOCHS) \
		--batch-size 32 --lr 0.01 --lr-schedule cosine --run-dir $(RUN_DIR)
	$(VENV)/bin/hvd-stgnn plot $(RUN_DIR)

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Pure unit tests only (no mpirun, no training runs).
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not mpi and not slow" $(PYTEST_ARGS)

clean:
	rm -rf runs data .pytest_cache
