# evonas_jax: the two README commands are `make quickstart` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Simply expanded (:=) so the train and search lines of one `make quickstart` share one timestamp.
ifndef WORKDIR
WORKDIR := workdirs/quickstart_$(shell date +%Y%m%d_%H%M%S)
endif
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist); --dist loadfile keeps each test file (and its expensive
# module-scoped compiled fixtures) in one worker. Most test time is single-threaded XLA
# compilation, so 2 workers on 2 cores nearly halve the wall time. `make test PYTEST_WORKERS=0`
# runs in one process.
PYTEST_WORKERS ?= 2
ifeq ($(PYTEST_WORKERS),0)
XDIST :=
else
XDIST := -n $(PYTEST_WORKERS) --dist loadfile
endif
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data quickstart test aot-h100 bench-scan clean-venv

# foolbox ships the 20 real CIFAR-10 test images the NB201 proxy bench reads (its data files
# only; --no-deps keeps eagerpy/GitPython out, foolbox itself is never imported). jax2onnx (the
# ONNX exporter) goes in --no-deps too: it pins orbax-checkpoint below ours and pulls in
# equinox/dm-pix/netron/huggingface-hub, none of which its converter needs.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps "foolbox==3.3.4"
	$(BIN)/pip install -q --no-deps "jax2onnx==0.17.1"
	touch $@

# Fashion-MNIST comes from the Debian package dataset-fashion-mnist (installed when running as
# root); without it the code falls back, loudly, to scikit-learn's bundled digits.
data:
	@if [ -d $(FMNIST_DIR) ]; then echo "Fashion-MNIST: $(FMNIST_DIR)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q dataset-fashion-mnist || \
	  (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) || \
	  echo "WARNING: could not install dataset-fashion-mnist; the digits fallback will be used"; \
	else echo "WARNING: $(FMNIST_DIR) missing and not root: run 'sudo apt-get install dataset-fashion-mnist' or set --config.data.data_dir; the digits fallback will be used"; fi

# The whole pipeline on 2 CPU cores: ViT teacher -> CA-DDKD supernet -> NSGA-II search (DMMPE).
# Rerunning with the same WORKDIR resumes whatever stage was interrupted.
quickstart: setup data
	$(BIN)/python -m evonas_jax.train --config configs/quickstart.py --workdir $(WORKDIR)/train
	$(BIN)/python -m evonas_jax.search --config configs/search_quickstart.py \
	  --workdir $(WORKDIR)/search --config.supernet_workdir=$(WORKDIR)/train

# The persistent XLA compilation cache is off for the tests by default: on a fresh clone (CI) it
# only adds the cost of writing every entry. `make test TEST_COMPILE_CACHE=~/.cache/evonas_jax/
# xla-tests` shares one between the test processes, so a second run loads what the first compiled.
TEST_COMPILE_CACHE ?= none
test: setup data
	@EVONAS_JAX_COMPILE_CACHE=$${EVONAS_JAX_COMPILE_CACHE:-$(TEST_COMPILE_CACHE)} $(BIN)/python -m pytest -q --durations=25 $(XDIST) $(PYTEST_ARGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): treated as success"; exit 0; fi; \
	exit $$rc

# Compile the Pallas selective-scan kernels ahead of time for an H100 on this CPU machine
# (creates .venv-cuda with jax[cuda12], ~5.5 GB).
aot-h100: setup
	bash launch/aot_compile_h100.sh

bench-scan: setup
	$(BIN)/python benchmarks/scan.py

clean-venv:
	rm -rf $(VENV)
