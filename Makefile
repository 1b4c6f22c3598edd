# distilprune: `make demo` (set up + run the main job end to end) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(VENV)/bin/distilprune models install
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/distilprune demo

# pytest exits 5 when it collected no test: that is a failure here.
test: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: no tests ran" >&2; exit 1; fi; exit $$status

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/finetune.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
