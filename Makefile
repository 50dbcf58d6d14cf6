# Agora: `make run` starts the platform, `make test` runs every test on an isolated stack.
# Everything is installed by these targets; see README.md.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The test stack's state folder is never the dev stack's: with AGORA_STATE_DIR exported
# (for `make run`), `make test` uses its test/ subfolder, else .state/test.
TEST_STATE := $(abspath $(or $(AGORA_STATE_DIR),.state))/test
TEST_ENV := AGORA_PROFILE=test AGORA_STATE_DIR=$(TEST_STATE)
PYTEST_ARGS ?=

.PHONY: help venv lock run seed stop status test test-unit test-deploy helm lint bench load chaos protos logs browser-deps

help:
	@echo "make run     install everything, start the local platform, print its URLs"
	@echo "make test    the same set-up on an isolated test stack, then all tests"
	@echo "make stop    stop everything 'make run' started;  make status  what runs where"
	@echo "make test-unit | lint | bench | load | chaos | protos | logs TRACE=<id>"

$(VENV)/.installed: pyproject.toml constraints.txt
	@echo "==> Python environment ($(VENV))"
	@# A venv whose creation failed half-way (no python3-venv: it has a python, no pip)
	@# is made again, not reused for ever.
	@$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); } \
	  || { echo "Creating $(VENV) failed: install python3-venv (apt-get install python3-venv), then run make again." >&2; rm -rf $(VENV); exit 1; }
	@$(PY) -m pip install --progress-bar off -q --upgrade pip
	@$(PY) -m pip install --progress-bar off -c constraints.txt -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

# Pin what the environment resolved to (pip has no lock of its own to write): the
# image installs the same versions the tests ran against.
lock: venv
	@$(PY) -m pip install --progress-bar off -q -e '.[dev]'
	@{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt
	@echo "constraints.txt: $$(grep -c '==' constraints.txt) packages pinned"

run: venv
	@$(PY) -m stack up --platform --no-urls
	@$(MAKE) --no-print-directory seed
	@$(PY) -m stack urls

# The demo catalog (and its stock when inventory runs); idempotent. SEED_ARGS="--products 100000".
seed: venv
	@$(PY) -m workers.catalog.seed $(SEED_ARGS)

# Not `venv`: stopping must not first reinstall the venv because pyproject.toml changed.
# If the venv lacks a dependency added since (stack imports much of agora), install, retry.
stop: | $(PY)
	@$(PY) -m stack down || { $(MAKE) --no-print-directory venv && $(PY) -m stack down; }

status: | $(PY)
	@$(PY) -m stack status || { $(MAKE) --no-print-directory venv && $(PY) -m stack status; }

# Made only when there is no venv at all (no prerequisites: never out of date).
$(PY):
	@$(MAKE) --no-print-directory venv

# Helm, built from the Go module proxy into the shared cache (cached: a second run builds nothing).
AGORA_CACHE ?= $(or $(AGORA_CACHE_DIR),$(HOME)/.cache/agora)
helm:
	@bash deploy/local/build_helm.sh "$(AGORA_CACHE)"

# The browser test's Debian chromium, Node.js and playwright-core (npm ci); idempotent.
browser-deps:
	@bash tests/browser/install.sh

# The test stack has its own state folder (TEST_STATE above) and ports (+100), is started
# fresh for each run and stopped afterwards, even when a test fails. Its pytest keeps its
# temporary folders there too: in the shared /tmp/pytest-of-<user>, another pytest started
# meanwhile removes all but the three newest sessions' folders, one in use included.
test: venv helm browser-deps
	@$(TEST_ENV) $(PY) -m stack down >/dev/null 2>&1 || true
	@rm -rf "$(TEST_STATE)" && mkdir -p "$(TEST_STATE)"
	@# A start that fails half-way stops what it started (nothing is left holding ports), and
	@# so does a run that is stopped: SIGTERM (a CI job cancelled) or SIGHUP (its terminal
	@# closed). The stack's processes run in sessions of their own and would outlive it.
	@# Once: make passes its own SIGTERM on to the recipe, which would run the trap again.
	@# After SIGHUP or SIGTERM the terminal or pipe may be gone: the stop logs to a file.
	@set -o pipefail; status=0; \
	  trap 'trap "" HUP TERM INT; $(TEST_ENV) $(PY) -m stack down >>"$(TEST_STATE)/stopped.log" 2>&1; exit 129' HUP; \
	  trap 'trap "" HUP TERM INT; $(TEST_ENV) $(PY) -m stack down >>"$(TEST_STATE)/stopped.log" 2>&1; exit 143' TERM; \
	  trap 'trap "" HUP TERM INT; $(TEST_ENV) $(PY) -m stack down; exit 130' INT; \
	  $(TEST_ENV) $(PY) -m stack up || { $(TEST_ENV) $(PY) -m stack down; exit 1; }; \
	  $(TEST_ENV) $(PY) -m pytest --basetemp="$(TEST_STATE)/pytest" $(PYTEST_ARGS) || status=$$?; \
	  $(TEST_ENV) $(PY) -m stack down; \
	  exit $$status

test-unit: venv
	@$(TEST_ENV) $(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Offline validation of the Kubernetes charts and image (tests/deploy; no cluster needed).
test-deploy: venv helm
	@$(PY) -m pytest tests/deploy $(PYTEST_ARGS)

lint: venv
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .
	@$(PY) -m mypy agora stack workers workflows activities gateway bench

# Needs the platform running (`make run`): it starts its own gateway and services.
bench: venv
	@$(PY) -m bench

# Stepped open-model load on the running, seeded platform (`make run` first) until p99 passes 200 ms
# (docs/benchmarks.md); LOAD_ARGS="--step 60 --warmup 15" etc. Not part of `make bench`.
LOAD_ARGS ?=
load: venv
	@$(PY) -m bench.load $(LOAD_ARGS)

# Faults injected one by one under a steady load, then the invariants checked from the
# stores (docs/chaos.md); starts whatever of the platform is missing. CHAOS_ARGS="--only redis".
CHAOS_ARGS ?=
chaos: venv
	@$(PY) -m bench.chaos $(CHAOS_ARGS)

protos: venv
	@$(PY) protos/generate.py

logs: venv
	@$(PY) -m agora.logview $(TRACE)
