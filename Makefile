# qkdnet: the two commands a new user needs are `make demo` and `make test`.
# Both create .venv on first use and install the pinned dependencies from requirements.lock.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-installed
LOCK := requirements.lock
SHELL := /bin/bash

.PHONY: demo test lint typecheck proto-check unit integration bench lock install clean

# The first run prints a line per step and per package (pip's own output goes to
# $(VENV)/pip.log, shown when it fails), so nobody stares at a silent minute.
$(DEPS): $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "qkdnet needs $(PYTHON) (Python 3.11)"; exit 2; }
	@echo "==> setting up $(VENV) (first run: about a minute; pip's output in $(VENV)/pip.log)"
	@echo "==> [1/3] creating $(VENV) with $$($(PYTHON) --version)"
	@$(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] upgrading pip"
	@$(BIN)/pip install --upgrade pip > $(VENV)/pip.log 2>&1 \
		|| { tail -n 25 $(VENV)/pip.log; exit 1; }
	@echo "==> [3/3] installing the $$(grep -c '==' $(LOCK)) pinned packages of $(LOCK)"
	@set -o pipefail; total=$$(grep -c '==' $(LOCK)); \
	PYTHONUNBUFFERED=1 $(BIN)/pip install --progress-bar off -r $(LOCK) 2>&1 \
		| tee -a $(VENV)/pip.log \
		| { n=0; doing="downloading"; since=$$SECONDS; while :; do \
			if IFS= read -r -t 15 line; then :; \
			elif [ $$? -gt 128 ]; then echo "    ... $$doing ($$((SECONDS - since)) s)"; continue; \
			else break; fi; \
			case $$line in \
				"Collecting "*) item=$${line#Collecting } ;; \
				"Processing "*) item=$${line#Processing }; item=$${item%% *}; item=$${item##*/} ;; \
				"Requirement already satisfied: "*) item=$${line#*: } ;; \
				"Installing collected packages"*) doing="unpacking"; since=$$SECONDS; \
					echo "    unpacking them into $(VENV) (half a minute or so)"; continue ;; \
				*) continue ;; \
			esac; \
			n=$$((n + 1)); echo "    [$$n/$$total] $${item%% *}"; \
		done; } \
		|| { echo "pip failed; the end of $(VENV)/pip.log:"; tail -n 25 $(VENV)/pip.log; exit 1; }
	@echo "==> $(VENV) ready"
	@touch $@

# The package maps node/, orchestrator/ and proto/ onto qkdnet.*; the strict editable mode links
# every file, so it is re-run each time to pick up new modules (it takes a second). Its bytecode
# is compiled here, as pip does for a regular install: a CLI verb then starts without compiling
# the package (about 0.1 s a verb), also where PYTHONDONTWRITEBYTECODE is set.
install: $(DEPS)
	@$(BIN)/pip install --no-deps --no-build-isolation -e . \
		--config-settings editable_mode=strict > $(VENV)/install.log 2>&1 \
		|| { cat $(VENV)/install.log; exit 1; }
	@$(BIN)/python -m compileall -q -j 0 build/__editable__.qkdnet-*/qkdnet > /dev/null

demo: install
	$(BIN)/qkdnet demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python scripts/architecture_graph.py --check

typecheck: install
	$(BIN)/mypy -p qkdnet.node -p qkdnet.orchestrator
	$(BIN)/mypy tests bench scripts

proto-check: install
	$(BIN)/python scripts/gen_proto.py --check

# The checks, then the unit and integration tiers, with the container tier (and the image build
# it needs) in a second pytest session beside them: scripts/run_suite.py.
test: install
	$(BIN)/python scripts/run_suite.py

unit: install
	$(BIN)/pytest tests/unit

bench: install
	$(BIN)/python bench/run_all.py

lock:
	$(BIN)/pip freeze --all --exclude-editable | grep -v -E "^(qkdnet|pip)=" > requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
