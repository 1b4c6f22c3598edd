# distilprune: `make demo` (set up + run the main job end to end) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install demo test lint bench clean deepsparse optimum

KERNELS := setup.py $(wildcard src/distilprune/engine/csrc/*.cpp)

$(STAMP): pyproject.toml $(KERNELS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet "setuptools>=77" wheel
	# --no-build-isolation: the C++ kernels build against the torch installed above
	$(PY) -m pip install --quiet --no-build-isolation -e ".[dev]"
	$(PY) -c "from distilprune.engine.kernels import kernel_status as s; print('sparse kernels:', s())"
	$(VENV)/bin/distilprune models install
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/distilprune demo

# pytest exits 5 when it collected no test: that is a failure here. One worker per CPU
# (pytest-xdist; each test runs torch on one thread): the suite takes about half as long on 2 CPUs.
test: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -n auto --dist worksteal; status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: no tests ran" >&2; exit 1; fi; exit $$status

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/finetune.py

# Optional DeepSparse 1.8.0 engine (Python 3.11 only) in its own venv: it pins onnx<1.15 and
# (through sparsezoo) numpy<2, which the main venv cannot hold. Not part of `install`.
DS_PYTHON ?= python3.11
DS_VENV   := .venv-deepsparse
DS_STAMP  := $(DS_VENV)/.installed-deepsparse-1.8.0

$(DS_STAMP):
	@command -v $(DS_PYTHON) >/dev/null || { echo "error: DeepSparse 1.8.0 needs Python 3.11 ($(DS_PYTHON) not found; set DS_PYTHON=...)" >&2; exit 1; }
	@$(DS_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "error: DeepSparse 1.8.0 needs Python 3.11, $(DS_PYTHON) is not" >&2; exit 1; }
	test -x $(DS_VENV)/bin/python || $(DS_PYTHON) -m venv $(DS_VENV)
	$(DS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DS_VENV)/bin/python -m pip install --quiet "deepsparse==1.8.0" tokenizers tqdm pyyaml
	# distilprune itself by path (a .pth), not pip: its build needs torch and a C++ compiler
	$(DS_VENV)/bin/python -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], 'distilprune-src.pth').write_text(str(pathlib.Path('src').resolve()) + '\\n')"
	$(DS_VENV)/bin/python -c "import deepsparse, distilprune.engine.deepsparse; print('deepsparse', deepsparse.__version__)"
	touch $(DS_STAMP)

deepsparse: $(DS_STAMP)

# Optional Optimum side venv for the interop benchmark and test (benchmarks/interop.py,
# tests/test_interop.py): optimum-onnx 0.1.0 needs transformers < 4.58 (no release for transformers
# 5 yet), so it cannot share the main venv. torch is the same CPU build as the main venv's.
OPT_VENV  := benchmarks/work/optimum-venv
OPT_STAMP := $(OPT_VENV)/.installed-optimum-onnx-0.1.0

$(OPT_STAMP):
	test -x $(OPT_VENV)/bin/python || $(PYTHON) -m venv $(OPT_VENV)
	$(OPT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OPT_VENV)/bin/python -m pip install --quiet torch==2.13.0 "transformers==4.57.*" "optimum-onnx[onnxruntime]==0.1.0" tokenizers
	$(OPT_VENV)/bin/python -c "import optimum.onnxruntime, transformers; print('optimum-onnx ready, transformers', transformers.__version__)"
	touch $(OPT_STAMP)

optimum: $(OPT_STAMP)

clean:
	rm -rf $(VENV) $(DS_VENV) runs .pytest_cache .ruff_cache
