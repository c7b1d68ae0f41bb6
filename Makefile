# Two commands from a fresh clone: `make train` and `make test`.
# A virtual environment is created in .venv unless one is already active.
ifdef VIRTUAL_ENV
PY := $(VIRTUAL_ENV)/bin/python
else
PY := .venv/bin/python
endif
STAMP := $(dir $(PY)).nnrecipe-installed

.PHONY: install train test lint bench clean
install: $(STAMP)
$(STAMP): pyproject.toml
	@[ -x $(PY) ] || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

train: $(STAMP)  ## the default job: convnet on the bundled digits, logged to W&B
	$(PY) src/train.py $(ARGS)

test: $(STAMP)  ## every test, end-to-end ones included (what CI runs)
	$(PY) -m pytest -q -n auto $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) scripts/bench.py

clean:
	rm -rf outputs/*/ .pytest_cache
