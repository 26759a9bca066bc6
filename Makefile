# Two commands on a fresh machine: `make demo` (train ResNet-20 on real data for a few epochs) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= $(CIFARLAB_DATA)
EPOCHS ?= 5

.PHONY: demo test venv clean

$(BIN)/.installed: pyproject.toml ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c ci/constraints.txt -e ".[test]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/cifarlab demo --epochs $(EPOCHS) $(if $(DATA),--data $(DATA),)

test: venv
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) runs .pytest_cache
