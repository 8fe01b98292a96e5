# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgeprune-installed
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench lint clean arm64-runtime

setup: $(STAMP)

# Re-installs only when the dependency list changes; a no-op (seconds) otherwise.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

# QUICK=1: a short pruning run and small checks (a smoke test; CI runs it)
demo: setup
	$(PY) scripts/demo.py $(if $(QUICK),--quick,)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) scripts/bench_train.py --quick
	$(PY) scripts/bench_latency_predictor.py --quick --out bench/results/latency_predictor_quick.json
	$(PY) scripts/bench_prune.py --quick
	$(PY) scripts/bench_export.py --quick

# aarch64 LiteRT/ONNX Runtime under QEMU user-mode, cached in ~/.cache/edgeprune/arm64 (idempotent;
# the arm64-emulated tests skip, with the reason, until it is built)
arm64-runtime: setup
	bash scripts/make-arm64-runtime.sh

# ruff, and the layer map (pyproject's [tool.importlinter]): a wrong-way import fails
lint: setup
	$(VENV)/bin/ruff check edgeprune tests scripts
	$(VENV)/bin/lint-imports --no-logo --no-cache

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
