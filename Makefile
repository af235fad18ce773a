# Two commands: `make run` and `make test`. Everything else is here for them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[fast,test]'
	touch $(STAMP)

run: $(STAMP)  ## start the gateway on the embedded default config (http://localhost:8000/)
	$(BIN)/wsgate run

lint: $(STAMP)  ## static checks: ruff and mypy --strict
	$(BIN)/ruff check src tests
	$(BIN)/mypy src

test: lint  ## install what tests need, check, and run the tests
	@command -v keytool >/dev/null || { echo "installing keytool (for JKS/JCEKS test keystores)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jre-headless) >/dev/null || true; }
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
