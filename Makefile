# qkdnet: the two commands a new user needs are `make demo` and `make test`.
# Both create .venv on first use and install the pinned dependencies from requirements.lock.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-installed

.PHONY: demo test lint typecheck proto-check unit integration bench lock install clean

$(DEPS): requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "qkdnet needs $(PYTHON) (Python 3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	touch $@

# The package maps node/, orchestrator/ and proto/ onto qkdnet.*; the strict editable mode links
# every file, so it is re-run each time to pick up new modules (it takes a second).
install: $(DEPS)
	@$(BIN)/pip install --no-deps --no-build-isolation -e . \
		--config-settings editable_mode=strict > $(VENV)/install.log 2>&1 \
		|| { cat $(VENV)/install.log; exit 1; }

demo: install
	$(BIN)/qkdnet demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy -p qkdnet.node -p qkdnet.orchestrator
	$(BIN)/mypy tests bench scripts

proto-check: install
	$(BIN)/python scripts/gen_proto.py --check

test: lint typecheck proto-check
	$(BIN)/pytest

unit: install
	$(BIN)/pytest tests/unit

bench: install
	$(BIN)/python bench/run_all.py

lock:
	$(BIN)/pip freeze --all --exclude-editable | grep -v -E "^(qkdnet|pip)=" > requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
