# Two set-up commands for a fresh machine with Python 3.11 and pip:  make demo  |  make test
PYTHON ?= python3
VENV   ?= .venv
# Pinned so CI never pulls a multi-GB CUDA build. For a GPU: make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[plot]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/rcsegnext demo

test: install-test
	$(BIN)/python -m pytest Testing

clean:
	rm -rf $(VENV) demo_output
