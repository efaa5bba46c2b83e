# wwts — set-up, tests, demo and benchmarks. Every target creates the virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Where the CPU-only build of torch comes from on a Linux machine without an NVIDIA GPU.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP  := $(VENV)/.wwts-installed
# The optional extras the test suite exercises (each backend and integration is tested for real).
EXTRAS ?= test,openvino,onnx,ray,store,modelscope

export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup test demo bench bench-quick bench-models doctor clean

setup: $(STAMP)

# torch goes in first: on Linux without nvidia-smi the CPU build (a local wheel if pip's
# find-links has one, else from PyTorch's CPU index), because plain `pip install torch` there pulls
# several GB of CUDA packages. Then wwts itself, whose `torch>=2.2` is already satisfied.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then \
		echo "No NVIDIA GPU found: installing the CPU build of torch $(TORCH_VERSION)"; \
		if $(PY) -m pip install -q --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null; then \
			$(PY) -m pip install "torch==$(TORCH_VERSION)"; \
		else \
			$(PY) -m pip install "torch==$(TORCH_VERSION)" --extra-index-url $(TORCH_CPU_INDEX); \
		fi; \
	else \
		$(PY) -m pip install "torch==$(TORCH_VERSION)"; \
	fi
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# First a real ImageNet classifier that needs no hub (EfficientNet-Lite0 from PyPI, exported once),
# then Chinese-CLIP (the hub or a local copy).
demo: $(STAMP)
	$(PY) scripts/export_efficientnet_lite0.py --out models/efficientnet-lite0
	$(VENV)/bin/wwts classify sample_images --model models/efficientnet-lite0 --top-k 3
	$(VENV)/bin/wwts classify sample_images --labels 人,车,动物,猫,咖啡,火箭,花,建筑 --top-k 3

doctor: $(STAMP)
	$(VENV)/bin/wwts doctor

# Full-size models with official configs and random weights (no download), for speed measurements.
bench-models: $(STAMP)
	$(PY) scripts/build_bench_models.py --out models

bench: bench-models
	$(PY) scripts/bench.py --models models

bench-quick: bench-models
	$(PY) scripts/bench.py --models models --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
