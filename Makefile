# `make test` and `make demo` create .venv when missing and install from pyproject.toml pinned by
# constraints.txt; a stamp file keeps the second run fast.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modaloom-installed
OUTPUT ?= demo-output

.PHONY: test demo lint install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,eval,demo,track]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy core modalities objectives plugins

demo: $(STAMP)
	$(VENV)/bin/modaloom demo --output $(OUTPUT)

clean:
	rm -rf $(VENV) build *.egg-info
