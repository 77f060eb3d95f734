# Two commands on a fresh machine (Python 3.11 and nothing else):
#   make demo   installs everything into .venv and runs the whole pipeline on the built-in digits demo
#   make test   installs everything into .venv and runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/shipyard demo-data demo_data
	$(BIN)/shipyard pipeline configs/demo.yaml
	@echo "Open the report page in a browser: $$(ls -t runs/digits/*/index.html | head -n 1)"

test: $(STAMP)
	bash scripts/system-deps.sh
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

clean:
	rm -rf $(VENV) runs demo_data .pytest_cache
