# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Each creates .venv on first use and reinstalls only when a requirements file changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check

.PHONY: run test lint browser-deps bench bench-gpu clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-stamp: requirements.txt | $(PY)
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.dev-stamp: requirements.txt requirements-dev.txt | $(PY)
	$(PIP) install -r requirements-dev.txt
	touch $@ $(VENV)/.run-stamp

run: $(VENV)/.run-stamp
	$(PY) app.py

# Browser tests need Debian's chromium; install it when we can (root with apt), else they skip
# with a message saying how to get it.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: chromium not installed; browser tests will skip (apt-get install chromium)"; }

lint: $(VENV)/.dev-stamp
	$(PY) -m ruff check .

# Two pytest workers (pytest-xdist): tests/app as two chains, one a worker, in file order, the
# other layers' tests at a lower priority on whichever worker is free (tests/conftest.py); about
# 11 minutes here, where one app chain took 15.
test: $(VENV)/.dev-stamp browser-deps
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2

bench: $(VENV)/.dev-stamp
	$(PY) benchmarks/penalty_cost.py $(BENCH_ARGS)

# The GPU checks in one command, for a machine with CUDA (under 8 minutes on one GPU): the CUDA
# tests, then the GPU benchmarks, results to $(RESULTS). It needs torch, torchvision and pytest
# only, so it runs with the machine's own python when there is no .venv:
#   make bench-gpu GPU_PY=python3 RESULTS=/some/folder
GPU_PY  ?= $(if $(wildcard $(PY)),$(PY),python3)
RESULTS ?= benchmarks/results
bench-gpu:
	mkdir -p $(RESULTS)
	$(GPU_PY) -c "import torch; assert torch.cuda.is_available(), 'bench-gpu needs a CUDA GPU'; print(torch.cuda.get_device_name())"
	-$(GPU_PY) -m pytest -q -p no:cacheprovider tests/library/test_cuda.py tests/library/test_jacobian.py tests/library/test_guards.py tests/library/test_architectures.py \
	  tests/library/test_gradient_matrix.py tests/library/test_behaviour.py tests/library/test_probes.py \
	  >$(RESULTS)/cuda_tests.txt 2>&1; status=$$?; tail -20 $(RESULTS)/cuda_tests.txt; exit $$status
	$(GPU_PY) benchmarks/gradient_matrix.py --device cuda --out $(RESULTS)
	$(GPU_PY) benchmarks/library_comparison.py --device cuda --repeats 7 --out $(RESULTS)
	$(GPU_PY) benchmarks/estimator_variance.py --device cuda --out $(RESULTS)
	$(GPU_PY) benchmarks/penalty_cost.py --device cuda --repeats 5 --out $(RESULTS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
