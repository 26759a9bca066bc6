# Two commands on a fresh machine: `make demo` (train ResNet-20 on real data for a few epochs) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= $(CIFARLAB_DATA)
EPOCHS ?= 5

.PHONY: demo test lint results venv clean

$(BIN)/.installed: pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c .ci/constraints.txt -e ".[test]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/cifarlab demo --epochs $(EPOCHS) $(if $(DATA),--data $(DATA),)

lint: venv  # ruff (pyflakes, pycodestyle, import order, bugbear; configured in pyproject.toml)
	$(BIN)/ruff check .

test: venv lint
	$(BIN)/python -m pytest -n 2 -q

results: venv  # regenerate docs/results.md, docs/results-report/ and the README's headline from the records in results/
	$(BIN)/cifarlab report results --out docs/results-report --page docs/results.md --readme README.md

clean:
	rm -rf $(VENV) runs .pytest_cache
