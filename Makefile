# Two commands on a fresh machine with Python 3.11, pip and make:
#   make serve   install into .venv and start the service on embedded defaults
#   make test    install into .venv, lint (ruff), type-check (mypy) and run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install serve test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/earmark serve

test: $(STAMP)
	$(BIN)/ruff check earmark tests bench
	$(BIN)/mypy earmark
	$(BIN)/python -m pytest -q --durations=15

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/bench_service.py

clean:
	rm -rf $(VENV) .earmark .pytest_cache
