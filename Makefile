# Two set-up commands for a fresh machine with Python 3.11 and pip:  make demo  |  make test
# (make test-fast: the tests not marked slow, for the edit loop)
PYTHON ?= python3
VENV   ?= .venv
# Pinned so CI never pulls a multi-GB CUDA build. For a GPU: make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: demo test test-fast install install-test clean

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

# pytest with the arguments $(1), then its wall time
define timed_pytest
	@echo '$(BIN)/python -m pytest $(1)'; start=$$(date +%s); $(BIN)/python -m pytest $(1); status=$$?; \
	echo "$(2): $$(( $$(date +%s) - start )) s wall time"; exit $$status
endef

# the whole suite (CI: .ci/run)
test: install-test
	$(call timed_pytest,Testing,make test (whole suite))

# every test not marked slow (pyproject.toml), on two worker processes (pytest-xdist): about a minute on 2 CPU cores
test-fast: install-test
	$(call timed_pytest,Testing -m "not slow" -n 2,make test-fast)

clean:
	rm -rf $(VENV) demo_output
