# hwprune: `make demo` and `make test` work on a fresh machine (CPU-only torch via constraints.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hwprune-installed

.PHONY: venv test test-all demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q -c constraints.txt --no-build-isolation --no-deps -e ".[onnx,openvino,dev]"
	$(PY) -c "import torch; assert torch.version.cuda is None, 'CUDA torch pulled in: ' + torch.__version__"
	! $(PY) -m pip list 2>/dev/null | grep -i -E '^(nvidia|triton)'
	touch $(STAMP)

# CPU-independence: the rounding-sensitive tests run again on the scalar and AVX2 kernels of ATen,
# MKL and oneDNN (the vector width changes reduction order, as moving between CPU vendors does).
ISAS ?= default avx2

test: $(STAMP)
	$(VENV)/bin/ruff check hwprune tests benchmarks
	$(VENV)/bin/mypy hwprune
	$(PY) -m pytest
	for isa in $(ISAS); do \
	  echo "== numerics tests under ATEN_CPU_CAPABILITY=$$isa"; \
	  ATEN_CPU_CAPABILITY=$$isa MKL_ENABLE_INSTRUCTIONS=$$(echo $$isa | sed 's/default/SSE4_2/;s/avx2/AVX2/') \
	  ONEDNN_MAX_CPU_ISA=$$(echo $$isa | sed 's/default/SSE41/;s/avx2/AVX2/') \
	  $(PY) -m pytest -q -m "numerics and not slow and not gpu and not trt" || exit 1; \
	done

test-all: $(STAMP)
	$(PY) -m pytest -m "not gpu and not trt"

demo: $(STAMP)
	$(VENV)/bin/hwprune run --force  # replaces the previous demo run in runs/demo

clean:
	rm -rf $(VENV) build *.egg-info
